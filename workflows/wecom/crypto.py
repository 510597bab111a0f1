"""WeCom's callback crypto, as its WXBizMsgCrypt samples and the "加解密方案说明" page specify.

A callback carries `msg_signature`, `timestamp` and `nonce` in its query and the ciphertext in
`<Encrypt>`; URL verification carries the ciphertext as `echostr`. The signature is the hex SHA-1 of
the four strings (token, timestamp, nonce, ciphertext) sorted and concatenated. The ciphertext is
base64 of AES-256-CBC with key = base64-decode(EncodingAESKey + "="), iv = the key's first 16 bytes,
PKCS#7 padding to a multiple of 32 bytes, over: 16 random bytes, the message's length as 4 bytes
big-endian, the message, the receiver id (the corp id). Anything that does not fit that shape is
refused with one exception, so an endpoint answers every forgery the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# WeCom pads to a multiple of 32 bytes (its samples' PKCS7Encoder.block_size), not AES's 16.
_PAD_BLOCK = 32
_RANDOM_BYTES = 16
_LENGTH_BYTES = 4
_KEY_CHARS = 43


class CallbackRefused(Exception):
    """A callback (or echostr) that is not WeCom's for this receiver: bad signature, ciphertext
    that does not decrypt to WeCom's layout, or a message for another receiver id."""


def signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """`msg_signature`: hex SHA-1 of the four values sorted and joined."""
    joined = "".join(sorted((token, timestamp, nonce, encrypted)))
    return hashlib.sha1(joined.encode()).hexdigest()


def verify(token: str, timestamp: str, nonce: str, encrypted: str, msg_signature: str) -> None:
    """Raises CallbackRefused unless `msg_signature` signs the values (compared in constant time)."""
    expected = signature(token, timestamp, nonce, encrypted)
    if not hmac.compare_digest(expected.encode(), msg_signature.encode()):
        raise CallbackRefused("msg_signature does not match")


def _key(encoding_aes_key: str) -> bytes:
    if len(encoding_aes_key) != _KEY_CHARS:
        raise ValueError("an EncodingAESKey is 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error as error:
        raise ValueError("an EncodingAESKey is base64 (a-zA-Z0-9)") from error
    return key


def encrypt(encoding_aes_key: str, receiver_id: str, message: bytes, *, random16: bytes | None = None) -> str:
    """The base64 ciphertext WeCom would send for `message` to `receiver_id` (`random16` fixes the
    random prefix, for reproducible vectors)."""
    key = _key(encoding_aes_key)
    prefix = os.urandom(_RANDOM_BYTES) if random16 is None else random16
    if len(prefix) != _RANDOM_BYTES:
        raise ValueError("random16 is 16 bytes")
    plain = prefix + struct.pack(">I", len(message)) + message + receiver_id.encode()
    pad = _PAD_BLOCK - len(plain) % _PAD_BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def decrypt(encoding_aes_key: str, receiver_id: str, encrypted: str) -> bytes:
    """The message inside `encrypted`; CallbackRefused when it is not WeCom's layout or names
    another receiver."""
    key = _key(encoding_aes_key)
    try:
        cipher_bytes = base64.b64decode(encrypted, validate=True)
    except binascii.Error as error:
        raise CallbackRefused("the ciphertext is not base64") from error
    if not cipher_bytes or len(cipher_bytes) % 16:
        raise CallbackRefused("the ciphertext is not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(cipher_bytes) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= _PAD_BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise CallbackRefused("bad padding")
    body = plain[_RANDOM_BYTES:-pad]
    if len(body) < _LENGTH_BYTES:
        raise CallbackRefused("too short")
    (length,) = struct.unpack(">I", body[:_LENGTH_BYTES])
    message = body[_LENGTH_BYTES : _LENGTH_BYTES + length]
    if len(message) != length:
        raise CallbackRefused("the length field runs past the plaintext")
    receiver = body[_LENGTH_BYTES + length :]
    if not hmac.compare_digest(receiver, receiver_id.encode()):
        raise CallbackRefused("the message is for another receiver")
    return message
