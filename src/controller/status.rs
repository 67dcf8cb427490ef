//! Status writes: only when something changed, as a merge patch of the changed
//! top-level fields. Fields the new status drops are sent as `null`, since a merge
//! patch otherwise keeps them.

use serde_json::{Map, Value};

use crate::crd::CanaryStatus;

/// The merge patch taking `old` to `new`, or `None` when they are equal.
pub fn status_patch(old: Option<&CanaryStatus>, new: &CanaryStatus) -> Option<Value> {
    let new_v = serde_json::to_value(new).ok()?;
    let old_v = old
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or(Value::Object(Map::new()));
    let (Value::Object(new_m), Value::Object(old_m)) = (new_v, old_v) else {
        return None;
    };
    let mut patch = Map::new();
    for (k, v) in &new_m {
        if old_m.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in old_m.keys() {
        if !new_m.contains_key(k) {
            patch.insert(k.clone(), Value::Null);
        }
    }
    if patch.is_empty() {
        None
    } else {
        Some(serde_json::json!({ "status": patch }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Phase;

    #[test]
    fn unchanged_status_writes_nothing() {
        let s = CanaryStatus {
            phase: Some(Phase::Progressing),
            canary_weight: 10,
            ..Default::default()
        };
        assert_eq!(status_patch(Some(&s), &s.clone()), None);
    }

    #[test]
    fn only_changed_fields_and_nulls_for_cleared_ones() {
        let old = CanaryStatus {
            phase: Some(Phase::Progressing),
            canary_weight: 10,
            hold_reason: Some("canary not ready".into()),
            ..Default::default()
        };
        let new = CanaryStatus {
            phase: Some(Phase::Progressing),
            canary_weight: 20,
            ..Default::default()
        };
        let patch = status_patch(Some(&old), &new).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"status": {"canaryWeight": 20, "holdReason": null}})
        );
    }
}
