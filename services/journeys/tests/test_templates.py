"""Templates rendered per profile in Jinja's sandbox: escaping where HTML is, strict variables with
errors that name the variable and never a value, bounded sources and outputs."""

from __future__ import annotations

import pytest

from onefold.journeys.adapters.templates import (
    EmailTemplate,
    TemplateError,
    Templates,
    TemplateVariables,
)
from onefold.platform.errors import InvalidArgument

SECRET_NAME = "Zoë-7f3a"


def variables(**traits: object) -> TemplateVariables:
    return TemplateVariables(
        profile_id="p-1",
        journey_id="j-welcome",
        message_id="m-42",
        traits={"first_name": SECRET_NAME, **traits},
        event={"product": {"name": "Kettle", "price": 39.5}, "items": [{"sku": "K-1"}]},
    )


WELCOME = EmailTemplate(
    name="welcome",
    subject="Welcome, {{ traits.first_name }}",
    text="Hi {{ traits.first_name }}, your {{ event.product.name }} costs {{ event.product.price }}.\n",
    html='<p>Hi {{ traits.first_name }}</p><a href="https://shop.example/?m={{ message.id }}">shop</a>',
)


def test_an_email_renders_subject_text_and_html_for_the_profile() -> None:
    templates = Templates()
    rendered = templates.render_email(templates.compile_email(WELCOME), variables())
    assert rendered.subject == f"Welcome, {SECRET_NAME}"
    assert rendered.text == f"Hi {SECRET_NAME}, your Kettle costs 39.5.\n"
    assert rendered.html == f'<p>Hi {SECRET_NAME}</p><a href="https://shop.example/?m=m-42">shop</a>'
    assert SECRET_NAME not in repr(rendered) and SECRET_NAME not in repr(variables())


def test_html_is_escaped_and_text_is_not() -> None:
    templates = Templates()
    rendered = templates.render_email(
        templates.compile_email(WELCOME), variables(first_name="<script>x()</script> & co")
    )
    assert "<p>Hi &lt;script&gt;x()&lt;/script&gt; &amp; co</p>" in rendered.html
    assert rendered.text.startswith("Hi <script>x()</script> & co,")


def test_ids_of_the_profile_journey_and_message_are_there() -> None:
    templates = Templates()
    compiled = templates.compile_text("ids", "text", "{{ profile.id }}/{{ journey.id }}/{{ message.id }}")
    assert templates.render_text(compiled, variables()) == "p-1/j-welcome/m-42"


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("Hi {{ traits.nickname }}", "traits.nickname"),
        ("Hi {{ traits['nickname'] }}", "traits.nickname"),
        ("{{ event.product.colour }}", "event.product.colour"),
        ("{{ traits.address.city }}", "traits.address"),
        ("{{ coupon }}", "coupon"),
        ("{% if traits.vip %}VIP{% endif %}", "traits.vip"),
    ],
)
def test_a_missing_variable_is_an_error_naming_it_and_the_template(source: str, missing: str) -> None:
    templates = Templates()
    compiled = templates.compile_text("promo", "text", "line one\n" + source)
    with pytest.raises(TemplateError) as raised:
        templates.render_text(compiled, variables())
    assert str(raised.value) == f"template 'promo' (text, line 2): variable '{missing}' is undefined"
    assert isinstance(raised.value, InvalidArgument)  # INVALID_ARGUMENT when it reaches an RPC
    assert raised.value.violations == [("promo.text", f"variable '{missing}' is undefined")]


def test_defaults_keep_a_missing_variable_optional() -> None:
    templates = Templates()
    compiled = templates.compile_text("promo", "text", "Hi {{ traits.nickname | default('there') }}")
    assert templates.render_text(compiled, variables()) == "Hi there"


def test_a_value_a_method_fails_on_is_never_quoted() -> None:
    templates = Templates()
    compiled = templates.compile_text("promo", "text", "{{ traits.first_name.encode('ascii') }}")
    with pytest.raises(TemplateError) as raised:
        templates.render_text(compiled, variables())
    assert str(raised.value) == "template 'promo' (text, line 1): failed with UnicodeEncodeError"


def test_a_missing_key_computed_from_a_value_is_not_named() -> None:
    templates = Templates()
    compiled = templates.compile_text("promo", "text", "{{ event.product[traits.first_name] }}")
    with pytest.raises(TemplateError) as raised:
        templates.render_text(compiled, variables())
    assert SECRET_NAME not in str(raised.value)
    assert str(raised.value) == "template 'promo' (text, line 1): a key computed while rendering is undefined"


def test_a_syntax_error_is_found_when_compiling_with_its_line() -> None:
    with pytest.raises(TemplateError) as raised:
        Templates().compile_email(EmailTemplate("broken", "ok", "fine\n{% if %}\n"))
    assert raised.value.part == "text" and raised.value.line == 2
    assert "syntax error" in str(raised.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ traits.__class__ }}",
        "{{ ''.__class__.__mro__ }}",
        "{{ event['items'].append(1) }}",  # the immutable sandbox: what a template is given stays as given
        "{{ 'x' * 10000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ lipsum(n=1000000) }}",
    ],
)
def test_the_sandbox_refuses_escapes_mutation_and_blowups(source: str) -> None:
    templates = Templates()
    compiled = templates.compile_text("evil", "text", source)
    with pytest.raises(TemplateError, match=r"template 'evil' \(text, line 1\)"):
        templates.render_text(compiled, variables())


def test_sources_and_outputs_are_bounded() -> None:
    templates = Templates(max_source_chars=100, max_output_chars=1000)
    with pytest.raises(TemplateError, match="longer than 100 characters"):
        templates.compile_text("big", "text", "x" * 101)
    compiled = templates.compile_text(
        "loop", "text", "{% for i in range(101) %}{{ traits.first_name }}!!{% endfor %}"
    )
    with pytest.raises(TemplateError, match="renders longer than 1000 characters"):
        templates.render_text(compiled, variables())


def test_a_subject_must_render_to_one_bounded_line() -> None:
    templates = Templates()
    two_lines = templates.compile_email(EmailTemplate("t", "Hi {{ traits.first_name }}", "body"))
    with pytest.raises(TemplateError, match=r"\(subject\): renders with a line break"):
        templates.render_email(two_lines, variables(first_name="Ann\r\nBcc: eve@example.com"))
    too_long = templates.compile_email(EmailTemplate("t", "{{ traits.first_name * 300 }}", "body"))
    with pytest.raises(TemplateError, match="longer than 255 characters"):
        templates.render_email(too_long, variables())


def test_an_email_needs_a_body() -> None:
    with pytest.raises(TemplateError, match="needs a text or an HTML body"):
        Templates().compile_email(EmailTemplate("empty", "subject", ""))


def test_a_text_only_email_has_no_html() -> None:
    templates = Templates()
    rendered = templates.render_email(templates.compile_email(EmailTemplate("t", "s", "plain")), variables())
    assert rendered.html == "" and rendered.text == "plain"
