"""WeCom's callback crypto against WeCom's own sample vectors, and every forgery refused."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from workflows.wecom import crypto
from workflows.wecom.crypto import CallbackRefused

# The values of Tencent's WXBizMsgCrypt samples for WeCom (Sample.cpp / Sample.php / Sample.cs, the
# comments "假设企业在企业微信后台上设置的参数如下"), reproduced in many public copies of the sample.
TOKEN = "QDG6eK"
CORP_ID = "wx5823bf96d3bd56c7"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
# 使用示例一: URL verification.
VERIFY_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
VERIFY_TIMESTAMP = "1409659589"
VERIFY_NONCE = "263014780"
VERIFY_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
# 使用示例二: a message POSTed to the callback URL.
MESSAGE_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
MESSAGE_TIMESTAMP = "1409659813"
MESSAGE_NONCE = "1372623149"
MESSAGE_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sY"
    "YvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYu"
    "R+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcal"
    "lcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5P"
    "l/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)


def test_wecom_sample_url_verification_answers_the_echostr() -> None:
    crypto.verify(TOKEN, VERIFY_TIMESTAMP, VERIFY_NONCE, VERIFY_ECHOSTR, VERIFY_SIGNATURE)
    assert crypto.decrypt(AES_KEY, CORP_ID, VERIFY_ECHOSTR) == b"1616140317555161061"


def test_wecom_sample_message_verifies_and_decrypts() -> None:
    assert crypto.signature(TOKEN, MESSAGE_TIMESTAMP, MESSAGE_NONCE, MESSAGE_ENCRYPT) == MESSAGE_SIGNATURE
    crypto.verify(TOKEN, MESSAGE_TIMESTAMP, MESSAGE_NONCE, MESSAGE_ENCRYPT, MESSAGE_SIGNATURE)
    message = crypto.decrypt(AES_KEY, CORP_ID, MESSAGE_ENCRYPT).decode()
    assert message.startswith(f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName>")
    assert "<FromUserName><![CDATA[mycreate]]></FromUserName>" in message
    assert "<Content><![CDATA[hello]]></Content>" in message


def test_round_trip_of_any_length_including_multibyte() -> None:
    for size in (0, 1, 11, 12, 13, 31, 32, 33, 500):
        message = ("企" * size).encode()[:size] if size else b""
        encrypted = crypto.encrypt(AES_KEY, CORP_ID, message)
        assert crypto.decrypt(AES_KEY, CORP_ID, encrypted) == message
        assert len(base64.b64decode(encrypted)) % 32 == 0


def test_a_fixed_random_prefix_gives_the_same_ciphertext() -> None:
    prefix = b"aaaabbbbccccdddd"
    first = crypto.encrypt(AES_KEY, CORP_ID, b"<xml/>", random16=prefix)
    assert first == crypto.encrypt(AES_KEY, CORP_ID, b"<xml/>", random16=prefix)
    assert first != crypto.encrypt(AES_KEY, CORP_ID, b"<xml/>")


def test_a_forged_signature_is_refused() -> None:
    forged = crypto.signature("another-token", MESSAGE_TIMESTAMP, MESSAGE_NONCE, MESSAGE_ENCRYPT)
    with pytest.raises(CallbackRefused):
        crypto.verify(TOKEN, MESSAGE_TIMESTAMP, MESSAGE_NONCE, MESSAGE_ENCRYPT, forged)
    with pytest.raises(CallbackRefused):
        crypto.verify(TOKEN, MESSAGE_TIMESTAMP, MESSAGE_NONCE, MESSAGE_ENCRYPT, "")
    # A replayed signature with another timestamp no longer signs the message.
    with pytest.raises(CallbackRefused):
        crypto.verify(TOKEN, "1409659814", MESSAGE_NONCE, MESSAGE_ENCRYPT, MESSAGE_SIGNATURE)


def _tampered(encrypted: str, index: int) -> str:
    raw = bytearray(base64.b64decode(encrypted))
    raw[index] ^= 0x80
    return base64.b64encode(bytes(raw)).decode()


def test_tampered_ciphertext_is_refused() -> None:
    # Flipping the first byte flips, through CBC, the top byte of the length field.
    tampered = _tampered(MESSAGE_ENCRYPT, 0)
    with pytest.raises(CallbackRefused):
        crypto.verify(TOKEN, MESSAGE_TIMESTAMP, MESSAGE_NONCE, tampered, MESSAGE_SIGNATURE)
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, tampered)
    # Flipping the last byte garbles the last block and its padding.
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, _tampered(MESSAGE_ENCRYPT, -1))
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, MESSAGE_ENCRYPT[:-8])
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, "not base64!")
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, "")


def _raw_encrypt(plain: bytes) -> str:
    key = base64.b64decode(AES_KEY + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def test_bad_padding_is_refused() -> None:
    body = b"r" * 16 + struct.pack(">I", 5) + b"hello" + CORP_ID.encode()
    good_pad = 32 - len(body) % 32
    assert crypto.decrypt(AES_KEY, CORP_ID, _raw_encrypt(body + bytes([good_pad]) * good_pad)) == b"hello"
    # Padding bytes that disagree, a zero pad, a pad beyond WeCom's 32-byte block.
    uneven = body + bytes([good_pad - 1]) * (good_pad - 1) + bytes([good_pad])
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, _raw_encrypt(uneven))
    zero = body + b"\0" * good_pad
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, _raw_encrypt(zero))
    beyond = body + bytes([good_pad]) * good_pad + bytes([48]) * 16 + bytes([48]) * 32
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, _raw_encrypt(beyond))


def test_a_message_for_another_receiver_is_refused() -> None:
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, "ww-another-corp", MESSAGE_ENCRYPT)
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID[:-1], MESSAGE_ENCRYPT)
    mine = crypto.encrypt(AES_KEY, "ww-another-corp", b"<xml/>")
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, mine)


def test_a_message_encrypted_with_another_key_is_refused() -> None:
    other_key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    with pytest.raises(CallbackRefused):
        crypto.decrypt(AES_KEY, CORP_ID, crypto.encrypt(other_key, CORP_ID, b"<xml/>", random16=b"r" * 16))


def test_a_malformed_encoding_aes_key_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        crypto.encrypt("short", CORP_ID, b"x")
    with pytest.raises(ValueError):
        crypto.decrypt("!" * 43, CORP_ID, MESSAGE_ENCRYPT)
