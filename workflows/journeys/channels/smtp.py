"""E-mail over SMTP with the standard library's client, run in a thread so the event loop stays free.

The SMTP reply codes decide what a retry may do: a refused connection or a 4xx reply means the
server did not take the message (send again later), a 5xx reply is a permanent rejection, and a
connection lost or timed out after the message data went out leaves the outcome unknown. A session
keeps one connection for many messages (a broadcast's batch), opened on its first message and again
after a connection was lost.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from email.utils import make_msgid

from workflows.journeys.channels.base import NotDelivered, OutcomeUnknown, Outgoing, Rejected, Session
from workflows.journeys.channels.config import SmtpSettings


class SmtpChannel:
    def __init__(self, settings: SmtpSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds

    async def deliver(self, message: Outgoing) -> str:
        async with self.session() as session:
            return await session.deliver(message)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        session = SmtpSession(self._settings, self._timeout)
        try:
            yield session
        finally:
            await asyncio.to_thread(session.close)


class SmtpSession:
    def __init__(self, settings: SmtpSettings, timeout_seconds: float) -> None:
        self._settings = settings
        self._timeout = timeout_seconds
        self._client: smtplib.SMTP | None = None

    async def deliver(self, message: Outgoing) -> str:
        return await asyncio.to_thread(self._deliver, message)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()

    def _connect(self) -> smtplib.SMTP:
        if self._client is not None:
            return self._client
        try:
            client = smtplib.SMTP(self._settings.host, self._settings.port, timeout=self._timeout)
        except (OSError, smtplib.SMTPException) as error:
            raise NotDelivered(f"cannot connect to the SMTP server: {error}") from error
        try:
            self._start(client)
        except BaseException:
            client.close()
            raise
        self._client = client
        return client

    def _deliver(self, message: Outgoing) -> str:
        email = EmailMessage()
        email["From"] = self._settings.sender
        email["To"] = message.to
        email["Subject"] = message.subject
        # Stable across attempts: the log's key, so a receiving system can tell a repeat.
        email["Message-ID"] = make_msgid(idstring=message.message_id.replace("/", "."), domain="memberops")
        email.set_content(message.body)
        client = self._connect()
        try:
            client.send_message(email)
        except smtplib.SMTPResponseException as error:
            raise _by_code(error.smtp_code, error.smtp_error) from error
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise _by_code(max(codes), b"recipient refused") from error
        except (TimeoutError, smtplib.SMTPServerDisconnected, OSError) as error:
            self._client = None
            client.close()
            raise OutcomeUnknown(f"the SMTP connection ended during the send: {error}") from error
        return str(email["Message-ID"])

    def _start(self, client: smtplib.SMTP) -> None:
        """EHLO, STARTTLS and login: nothing of the message has gone out yet, so failures are safe."""
        try:
            client.ehlo()
            if self._settings.starttls:
                client.starttls()
                client.ehlo()
            if self._settings.username:
                client.login(self._settings.username, self._settings.password)
        except smtplib.SMTPAuthenticationError as error:
            raise Rejected(f"SMTP login refused: {error.smtp_code}") from error
        except (OSError, smtplib.SMTPException) as error:
            raise NotDelivered(f"SMTP session could not start: {error}") from error


def _by_code(code: int, text: bytes | str) -> Exception:
    reply = text.decode(errors="replace") if isinstance(text, bytes) else text
    if 400 <= code < 500:
        return NotDelivered(f"SMTP {code}: {reply}")
    return Rejected(f"SMTP {code}: {reply}")
