"""WeCom's callback XML read safely: the envelope (`<xml><ToUserName/><Encrypt/><AgentID/></xml>`)
and the decrypted event (`<xml><Event/><ChangeType/><UserID/><ExternalUserID/>...</xml>`), both flat
documents of text elements under `<xml>`.

The body comes from the internet before any signature is checked, so it is parsed with expat
directly (defusedxml is not available): a size cap, no DOCTYPE (so no entity declarations, internal
or external: no billion laughs, no file or network reads), a cap on elements and depth, one root
named `xml`. Any of that broken is `MalformedXml`, never another exception.
"""

from __future__ import annotations

import xml.parsers.expat

# WeCom's event messages are a few hundred bytes; its envelope a little more than the ciphertext.
MAX_BYTES = 64 * 1024
MAX_ELEMENTS = 200
MAX_DEPTH = 8


class MalformedXml(ValueError):
    """Not a WeCom callback document (too large, not XML, a DOCTYPE, not `<xml>` of elements)."""


class _Reader:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self._depth = 0
        self.elements = 0
        self._child: str | None = None
        self._text: list[str] = []

    def start(self, name: str, _attributes: object) -> None:
        self._depth += 1
        self.elements += 1
        if self.elements > MAX_ELEMENTS or self._depth > MAX_DEPTH:
            raise MalformedXml("too many or too deeply nested elements")
        if self._depth == 1 and name != "xml":
            raise MalformedXml(f"the root element is <{name}>, not <xml>")
        if self._depth == 2:
            if name in self.fields or name == self._child:
                raise MalformedXml(f"<{name}> appears twice")
            self._child = name
            self._text = []

    def end(self, _name: str) -> None:
        if self._depth == 2 and self._child is not None:
            self.fields[self._child] = "".join(self._text).strip()
            self._child = None
        self._depth -= 1

    def text(self, data: str) -> None:
        # Only a top-level child's own text counts; text of nested elements (WeCom's events have
        # none) is ignored.
        if self._depth == 2 and self._child is not None:
            self._text.append(data)


def _forbidden(*_args: object) -> None:
    raise MalformedXml("a DOCTYPE or entity declaration is not accepted")


def _no_external_entity(*_args: object) -> int:
    raise MalformedXml("an external entity is not accepted")


def parse(data: bytes, *, max_bytes: int = MAX_BYTES) -> dict[str, str]:
    """The text of each element under `<xml>`, by element name."""
    if len(data) > max_bytes:
        raise MalformedXml(f"larger than {max_bytes} bytes")
    reader = _Reader()
    parser = xml.parsers.expat.ParserCreate()
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _forbidden
    parser.EntityDeclHandler = _forbidden
    parser.UnparsedEntityDeclHandler = _forbidden
    parser.ExternalEntityRefHandler = _no_external_entity
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.text
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as error:
        raise MalformedXml(f"not well-formed XML: {error}") from error
    except (UnicodeError, ValueError) as error:
        if isinstance(error, MalformedXml):
            raise
        raise MalformedXml(f"not readable XML: {error}") from error
    if reader.elements == 0:
        raise MalformedXml("no <xml> element")
    return reader.fields
