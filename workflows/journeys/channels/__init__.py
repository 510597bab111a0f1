"""Delivery channels: e-mail over SMTP, and SMS, app push and WeCom through one HTTP provider adapter."""
