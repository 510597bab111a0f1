"""WeCom (企业微信): the callback crypto, the client of WeCom's server API, and the tag sync and
callback pull built on them (issue 24)."""
