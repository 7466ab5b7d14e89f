import nats

from onefold.platform.bus_permissions import ADMIN


async def test_nats_server_fixture_has_jetstream_and_survives_kill(nats_server):
    nc = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
    js = nc.jetstream()
    await js.add_stream(name="T", subjects=["t.>"])
    ack = await js.publish("t.1", b"one")
    assert ack.seq == 1
    await nc.close()

    nats_server.kill()
    nats_server.start()

    nc = await nats.connect(nats_server.url, **nats_server.connect_options(ADMIN))
    js = nc.jetstream()
    info = await js.stream_info("T")
    assert info.state.messages == 1  # the file store kept the acknowledged message
    await nc.close()
