//! Alerts to chat systems and generic webhooks (`AlertProvider`).
