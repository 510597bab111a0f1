"""A local WeCom server faithful to WeCom's protocol (paths, JSON shapes, errcodes, token expiry,
per-minute quotas, encrypted callbacks), for the tests and for `make up` (`python -m deploy.wecom_local`).
Tests drive it through `LocalWeCom`; the same controls are served under `/_local/...`."""

from deploy.wecom_local.callbacks import Delivery
from deploy.wecom_local.corp import Refusal
from deploy.wecom_local.server import Call, HeldTag, LocalWeCom

__all__ = ["Call", "Delivery", "HeldTag", "LocalWeCom", "Refusal"]
