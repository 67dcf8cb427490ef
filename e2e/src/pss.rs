//! A checker of the `restricted` Pod Security Standard (Kubernetes 1.25+ policy,
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/>) over
//! rendered manifests. The local API server is 1.20, which has no PodSecurity
//! admission, so this is how the operator's pod spec is held to it.

use serde_json::Value;

/// Capabilities the baseline policy lets a container add.
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The pod templates of a rendered multi-document stream, as (`Kind/name`,
/// template metadata, pod spec).
pub fn pod_templates(docs: &[Value]) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("");
        let name = format!("{kind}/{}", d["metadata"]["name"].as_str().unwrap_or(""));
        let (meta, spec) = match kind {
            "Pod" => (d["metadata"].clone(), d["spec"].clone()),
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => (
                d["spec"]["template"]["metadata"].clone(),
                d["spec"]["template"]["spec"].clone(),
            ),
            "CronJob" => (
                d["spec"]["jobTemplate"]["spec"]["template"]["metadata"].clone(),
                d["spec"]["jobTemplate"]["spec"]["template"]["spec"].clone(),
            ),
            _ => continue,
        };
        out.push((name, meta, spec));
    }
    out
}

fn truthy(v: &Value) -> bool {
    v.as_bool() == Some(true)
}

/// Every violation of the restricted policy by a pod (its template's metadata and
/// spec), one line each naming the rule and the field.
pub fn restricted_violations(meta: &Value, spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    // Baseline.
    for f in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(&spec[f]) {
            v.push(format!("host namespaces: spec.{f} must be unset or false"));
        }
    }
    let psc = &spec["securityContext"];
    for (i, vol) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let kind = vol
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name").cloned())
            .unwrap_or_default();
        if kind == "hostPath" {
            v.push(format!("hostPath volumes: spec.volumes[{i}] is a hostPath"));
        }
        if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
            v.push(format!(
                "volume types: spec.volumes[{i}] is {kind:?}, not one of {RESTRICTED_VOLUMES:?}"
            ));
        }
    }
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            v.push(format!(
                "sysctls: spec.securityContext.sysctls {name:?} is not safe"
            ));
        }
    }
    for (k, val) in meta["annotations"].as_object().into_iter().flatten() {
        if let Some(rest) = k.strip_prefix("container.apparmor.security.beta.kubernetes.io/") {
            let p = val.as_str().unwrap_or("");
            if p != "runtime/default" && !p.starts_with("localhost/") {
                v.push(format!("AppArmor: container {rest} has profile {p:?}"));
            }
        }
    }
    selinux(&mut v, "spec.securityContext", &psc["seLinuxOptions"]);
    let pod_seccomp = psc["seccompProfile"]["type"].as_str();
    if let Some(t) = pod_seccomp
        && t != "RuntimeDefault"
        && t != "Localhost"
    {
        v.push(format!(
            "seccomp: spec.securityContext.seccompProfile.type is {t:?}"
        ));
    }
    let pod_non_root = psc["runAsNonRoot"].as_bool();
    if pod_non_root == Some(false) {
        v.push("runAsNonRoot: spec.securityContext.runAsNonRoot is false".into());
    }
    if psc["runAsUser"].as_i64() == Some(0) {
        v.push("runAsUser: spec.securityContext.runAsUser is 0".into());
    }

    let mut containers = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            containers.push((format!("spec.{list}[{i}]"), c));
        }
    }
    if spec["containers"].as_array().is_none_or(Vec::is_empty) {
        v.push("spec.containers is empty".into());
    }
    for (path, c) in containers {
        let sc = &c["securityContext"];
        if truthy(&sc["privileged"]) {
            v.push(format!(
                "privileged: {path}.securityContext.privileged is true"
            ));
        }
        for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
            if p["hostPort"].as_i64().is_some_and(|h| h != 0) {
                v.push(format!("host ports: {path}.ports[{j}].hostPort is set"));
            }
        }
        if let Some(m) = sc["procMount"].as_str()
            && m != "Default"
        {
            v.push(format!(
                "/proc mount: {path}.securityContext.procMount is {m:?}"
            ));
        }
        selinux(
            &mut v,
            &format!("{path}.securityContext"),
            &sc["seLinuxOptions"],
        );
        // Restricted.
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            v.push(format!(
                "privilege escalation: {path}.securityContext.allowPrivilegeEscalation must be false"
            ));
        }
        match sc["runAsNonRoot"].as_bool() {
            Some(false) => v.push(format!(
                "runAsNonRoot: {path}.securityContext.runAsNonRoot is false"
            )),
            None if pod_non_root != Some(true) => v.push(format!(
                "runAsNonRoot: neither spec.securityContext.runAsNonRoot nor {path}.securityContext.runAsNonRoot is true"
            )),
            _ => {}
        }
        if sc["runAsUser"].as_i64() == Some(0) {
            v.push(format!("runAsUser: {path}.securityContext.runAsUser is 0"));
        }
        match sc["seccompProfile"]["type"].as_str() {
            Some("RuntimeDefault" | "Localhost") => {}
            Some(t) => v.push(format!(
                "seccomp: {path}.securityContext.seccompProfile.type is {t:?}"
            )),
            None if pod_seccomp.is_none() => v.push(format!(
                "seccomp: neither spec.securityContext.seccompProfile nor {path}.securityContext.seccompProfile is set"
            )),
            None => {}
        }
        let caps = &sc["capabilities"];
        let drops_all = caps["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d.as_str() == Some("ALL"));
        if !drops_all {
            v.push(format!(
                "capabilities: {path}.securityContext.capabilities.drop must include ALL"
            ));
        }
        for a in caps["add"].as_array().into_iter().flatten() {
            let a = a.as_str().unwrap_or("");
            if a != "NET_BIND_SERVICE" {
                let why = if BASELINE_CAPS.contains(&a) {
                    "only NET_BIND_SERVICE under restricted"
                } else {
                    "not even allowed under baseline"
                };
                v.push(format!(
                    "capabilities: {path}.securityContext.capabilities.add {a:?} ({why})"
                ));
            }
        }
    }
    v
}

fn selinux(v: &mut Vec<String>, path: &str, o: &Value) {
    if let Some(t) = o["type"].as_str()
        && !matches!(
            t,
            "" | "container_t" | "container_init_t" | "container_kvm_t"
        )
    {
        v.push(format!("SELinux: {path}.seLinuxOptions.type is {t:?}"));
    }
    for f in ["user", "role"] {
        if o[f].as_str().is_some_and(|s| !s.is_empty()) {
            v.push(format!("SELinux: {path}.seLinuxOptions.{f} is set"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}}}]
        })
    }

    /// Each rule can fail: one mutation of a compliant pod per rule.
    #[test]
    fn each_rule_refuses_its_violation() {
        assert_eq!(
            restricted_violations(&json!({}), &good()),
            Vec::<String>::new()
        );
        let cases: Vec<(&str, Value)> = vec![
            ("host namespaces", json!({"hostNetwork": true})),
            (
                "hostPath volumes",
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
            ),
            (
                "volume types",
                json!({"volumes": [{"name": "n", "nfs": {"server": "x"}}]}),
            ),
            (
                "runAsNonRoot",
                json!({"securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "RuntimeDefault"}}}),
            ),
            (
                "runAsNonRoot",
                json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}),
            ),
            (
                "runAsUser",
                json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}}),
            ),
            (
                "seccomp",
                json!({"securityContext": {"runAsNonRoot": true}}),
            ),
            (
                "seccomp",
                json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Unconfined"}}}),
            ),
            (
                "sysctls",
                json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}, "sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
            ),
        ];
        for (rule, patch) in cases {
            let mut spec = good();
            for (k, val) in patch.as_object().unwrap() {
                spec[k] = val.clone();
            }
            let v = restricted_violations(&json!({}), &spec);
            assert!(v.iter().any(|l| l.starts_with(rule)), "{rule}: {v:?}");
        }
        let container_cases: Vec<(&str, Value)> = vec![
            (
                "privileged",
                json!({"privileged": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
            ),
            (
                "privilege escalation",
                json!({"capabilities": {"drop": ["ALL"]}}),
            ),
            ("capabilities", json!({"allowPrivilegeEscalation": false})),
            (
                "capabilities",
                json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}),
            ),
            (
                "capabilities",
                json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}),
            ),
            (
                "/proc mount",
                json!({"procMount": "Unmasked", "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
            ),
            (
                "SELinux",
                json!({"seLinuxOptions": {"user": "root"}, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}),
            ),
        ];
        for (rule, sc) in container_cases {
            let mut spec = good();
            spec["containers"][0]["securityContext"] = sc;
            let v = restricted_violations(&json!({}), &spec);
            assert!(v.iter().any(|l| l.starts_with(rule)), "{rule}: {v:?}");
        }
        let mut spec = good();
        spec["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}]);
        assert!(
            restricted_violations(&json!({}), &spec)
                .iter()
                .any(|l| l.starts_with("host ports"))
        );
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}});
        assert!(
            restricted_violations(&meta, &good())
                .iter()
                .any(|l| l.starts_with("AppArmor"))
        );
        // An init container is held to the same rules.
        let mut spec = good();
        spec["initContainers"] = json!([{"name": "init", "image": "i"}]);
        let v = restricted_violations(&json!({}), &spec);
        assert!(
            v.iter().any(|l| l.contains("spec.initContainers[0]")),
            "{v:?}"
        );
    }
}
