//! The JSON each provider type receives. Shapes follow Flagger's notifiers so bots
//! and hooks written for Flagger's messages keep working.

use serde_json::{Value, json};

use crate::crd::{Canary, CheckStatus, Verdict};

use super::{AlertEvent, ProviderKind, Severity, Target};

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// What every alert says, whatever the provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub canary: String,
    pub namespace: String,
    pub phase: String,
    pub severity: Severity,
    pub text: String,
    pub failed_check: Option<CheckStatus>,
    pub fields: Vec<Field>,
}

fn describe_check(c: &CheckStatus) -> String {
    let value = c
        .value
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "no value".into());
    let threshold = c.threshold.as_deref().unwrap_or("none");
    let verdict = match c.verdict {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Inconclusive => "inconclusive",
    };
    let mut s = format!("{}: {value} (threshold {threshold}, {verdict})", c.name);
    if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(" - ");
        s.push_str(m);
    }
    s
}

impl Message {
    pub fn new(canary: &Canary, event: &AlertEvent) -> Message {
        let name = canary.name_str().to_string();
        let namespace = canary.namespace_or_default();
        let mut fields = vec![
            Field {
                name: "Target".into(),
                value: format!(
                    "{}/{}.{}",
                    canary.spec.target_ref.kind,
                    canary.target_name(),
                    namespace
                ),
            },
            Field {
                name: "Phase".into(),
                value: event.phase.as_str().into(),
            },
        ];
        if let Some(c) = &event.failed_check {
            fields.push(Field {
                name: "Failed check".into(),
                value: describe_check(c),
            });
        }
        Message {
            canary: name,
            namespace,
            phase: event.phase.as_str().into(),
            severity: event.severity,
            text: event.message.clone(),
            failed_check: event.failed_check.clone(),
            fields,
        }
    }

    fn title(&self) -> String {
        format!("{}.{}", self.canary, self.namespace)
    }
}

/// Slack's attachment format; Discord (on `/slack`) and Rocket.Chat read it too.
fn slack_like(target: &Target, m: &Message, color: &str) -> Value {
    let fields: Vec<Value> = m
        .fields
        .iter()
        .map(|f| json!({"title": f.name, "value": f.value, "short": false}))
        .collect();
    json!({
        "channel": target.channel,
        "username": target.username,
        "icon_url": "",
        "icon_emoji": ":rocket:",
        "attachments": [{
            "color": color,
            "author_name": m.title(),
            "text": m.text,
            "mrkdwn_in": ["text"],
            "fields": fields,
        }],
    })
}

/// The request body for `target`'s provider type.
pub fn render(target: &Target, m: &Message) -> Value {
    let error = m.severity == Severity::Error;
    match target.kind {
        ProviderKind::Slack | ProviderKind::Discord => {
            slack_like(target, m, if error { "danger" } else { "good" })
        }
        ProviderKind::Rocket => slack_like(target, m, if error { "#FF0000" } else { "#0076D7" }),
        ProviderKind::MsTeams => {
            let facts: Vec<Value> = m
                .fields
                .iter()
                .map(|f| json!({"name": f.name, "value": f.value}))
                .collect();
            json!({
                "@type": "MessageCard",
                "@context": "http://schema.org/extensions",
                "themeColor": if error { "FF0000" } else { "0076D7" },
                "summary": m.title(),
                "sections": [{
                    "activityTitle": m.text,
                    "activitySubtitle": m.title(),
                    "facts": facts,
                }],
            })
        }
        ProviderKind::GChat => {
            let mut sections = vec![json!({"widgets": [{"textParagraph": {
                "text": format!("<font color=#848484><strong>{}</strong></font>", m.text)
            }}]})];
            sections.extend(m.fields.iter().map(|f| {
                json!({"widgets": [{"textParagraph": {
                    "text": format!("{}<br><font color=#848484><strong>{}</strong></font>", f.name, f.value)
                }}]})
            }));
            json!({"cards": [{
                "header": {"title": "Serin", "subtitle": m.title(), "imageUrl": ""},
                "sections": sections,
            }]})
        }
        ProviderKind::Webhook => json!({
            "canary": m.canary,
            "namespace": m.namespace,
            "phase": m.phase,
            "severity": m.severity.as_str(),
            "message": m.text,
            "failedCheck": m.failed_check,
            "fields": m.fields.iter().map(|f| json!({"name": f.name, "value": f.value})).collect::<Vec<_>>(),
        }),
    }
}
