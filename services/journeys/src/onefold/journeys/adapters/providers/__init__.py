"""Channel providers behind one interface (`base.Provider`: `send(message) -> Delivery`): SMTP
email (`smtp.py`), HTTP JSON endpoints for SMS, app push and WeChat template messages
(`http.py`), the offline sandbox (`sandbox.py`); retries and rate limits around any of them
(`resilience.py`); built from the `journeys.channels` settings by `factory.build_channels`."""

from onefold.journeys.adapters.providers.base import Delivery, DeliveryStatus, Message, Provider
from onefold.journeys.adapters.providers.factory import Channels, build_channels
from onefold.journeys.adapters.providers.sealing import ProfileErased, Sealer, SubjectKeySealer

__all__ = [
    "Channels",
    "Delivery",
    "DeliveryStatus",
    "Message",
    "ProfileErased",
    "Provider",
    "Sealer",
    "SubjectKeySealer",
    "build_channels",
]
