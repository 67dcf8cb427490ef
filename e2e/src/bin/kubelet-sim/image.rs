//! Local OCI images for the kubelet simulator.
//!
//! `--image-dir` holds OCI archives (`*.tar`, as `buildah push oci-archive:` or
//! `podman save --format oci-archive` write them) and unpacked OCI layouts. A pod
//! whose image names one of them (`org.opencontainers.image.ref.name`) runs that
//! image: its layers are unpacked once per manifest digest, each container gets its
//! own copy of the rootfs (so the ServiceAccount files written into it are the
//! pod's), and the process runs chrooted there with the image's config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::process::Command;
use tokio::sync::Mutex;

/// What the runtime needs from an image's config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug)]
pub struct Image {
    /// `sha256:...` of the manifest: what the pod's `imageID` reports.
    pub digest: String,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

pub struct ImageStore {
    dirs: Vec<PathBuf>,
    cache: PathBuf,
    unpacked: Mutex<HashMap<String, Arc<Image>>>,
}

/// Where an image's manifest is: an archive or a layout directory, plus its digest.
#[derive(Debug, Clone)]
struct Found {
    source: PathBuf,
    archive: bool,
    digest: String,
}

/// `serin`, `localhost/serin:latest` and `docker.io/library/serin:latest` are one
/// image; a reference without tag or digest means `:latest`.
pub fn normalize_ref(r: &str) -> String {
    let mut s = r.trim();
    for prefix in ["docker.io/library/", "docker.io/", "localhost/"] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
            break;
        }
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if last.contains(':') || last.contains('@') {
        s.to_string()
    } else {
        format!("{s}:latest")
    }
}

/// The manifests an OCI `index.json` lists, with their reference names.
fn index_refs(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            let digest = m["digest"].as_str()?;
            Some((normalize_ref(name), digest.to_string()))
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

pub fn parse_config(blob: &Value) -> ImageConfig {
    let c = &blob["config"];
    ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"])
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect(),
        working_dir: c["WorkingDir"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        user: c["User"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    }
}

/// `sha256:abc` → `blobs/sha256/abc`, refusing anything that could leave the layout.
fn blob_path(digest: &str) -> Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| anyhow!("malformed digest {digest:?}"))?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok(alg) || !ok(hex) {
        bail!("malformed digest {digest:?}");
    }
    Ok(Path::new("blobs").join(alg).join(hex))
}

async fn run(cmd: &mut Command, what: &str) -> Result<Vec<u8>> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Applies the OCI whiteouts a layer left in `root`: `.wh.NAME` deletes NAME (from
/// lower layers) and is removed itself; opaque markers are dropped.
fn apply_whiteouts(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<_>>()?;
        // Whiteouts first: a directory they delete must not be descended into.
        for name in &names {
            let path = dir.join(name);
            if name == ".wh..wh..opq" {
                std::fs::remove_file(&path)?;
            } else if let Some(target) = name.strip_prefix(".wh.") {
                let t = dir.join(target);
                if t.is_dir() && !t.is_symlink() {
                    std::fs::remove_dir_all(&t)?;
                } else if t.symlink_metadata().is_ok() {
                    std::fs::remove_file(&t)?;
                }
                std::fs::remove_file(&path)?;
            }
        }
        for name in names.iter().filter(|n| !n.starts_with(".wh.")) {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                stack.push(path);
            }
        }
    }
    Ok(())
}

impl ImageStore {
    pub fn new(dirs: Vec<PathBuf>, cache: PathBuf) -> Self {
        ImageStore {
            dirs,
            cache,
            unpacked: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.dirs.is_empty()
    }

    /// Looks `image` up among the local images (scanned on every call: tests add
    /// archives while the simulator runs). None: not a local image.
    async fn locate(&self, image: &str) -> Result<Option<Found>> {
        let want = normalize_ref(image);
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                let (index, archive) = if path.is_dir() && path.join("index.json").is_file() {
                    (read_json(&path.join("index.json"))?, false)
                } else if path.extension().is_some_and(|e| e == "tar") {
                    let raw = run(
                        Command::new("tar").arg("-xOf").arg(&path).arg("index.json"),
                        &format!("tar -xOf {} index.json", path.display()),
                    )
                    .await?;
                    let index = serde_json::from_slice(&raw)
                        .with_context(|| format!("parsing index.json of {}", path.display()))?;
                    (index, true)
                } else {
                    continue;
                };
                if let Some((_, digest)) = index_refs(&index).into_iter().find(|(r, _)| *r == want)
                {
                    return Ok(Some(Found {
                        source: path,
                        archive,
                        digest,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The unpacked image `image` names, or None when it is not a local image.
    pub async fn get(&self, image: &str) -> Result<Option<Arc<Image>>> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(found) = self.locate(image).await? else {
            return Ok(None);
        };
        // One unpack at a time: two pods of a new image must not race on its dir.
        let mut unpacked = self.unpacked.lock().await;
        if let Some(img) = unpacked.get(&found.digest) {
            return Ok(Some(img.clone()));
        }
        let img = Arc::new(self.unpack(&found).await?);
        unpacked.insert(found.digest.clone(), img.clone());
        Ok(Some(img))
    }

    async fn unpack(&self, found: &Found) -> Result<Image> {
        let key = found.digest.replace(':', "-");
        let dir = self.cache.join(&key);
        let rootfs = dir.join("rootfs");
        let layout = if found.archive {
            dir.join("layout")
        } else {
            found.source.clone()
        };
        let config_file = dir.join("config.json");
        if !(rootfs.is_dir() && config_file.is_file()) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&rootfs)
                .with_context(|| format!("creating {}", rootfs.display()))?;
            if found.archive {
                std::fs::create_dir_all(&layout)?;
                run(
                    Command::new("tar")
                        .arg("-xf")
                        .arg(&found.source)
                        .arg("-C")
                        .arg(&layout),
                    &format!("unpacking {}", found.source.display()),
                )
                .await?;
            }
            let manifest = read_json(&layout.join(blob_path(&found.digest)?))?;
            let config_digest = manifest["config"]["digest"]
                .as_str()
                .ok_or_else(|| anyhow!("manifest {} has no config", found.digest))?;
            let config = read_json(&layout.join(blob_path(config_digest)?))?;
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                let digest = layer["digest"]
                    .as_str()
                    .ok_or_else(|| anyhow!("a layer of {} has no digest", found.digest))?;
                let blob = layout.join(blob_path(digest)?);
                // GNU tar detects gzip/zstd itself; ownership and modes are kept
                // (we run as root), which is what runAsUser needs to be honest.
                run(
                    Command::new("tar")
                        .arg("-xpf")
                        .arg(&blob)
                        .arg("-C")
                        .arg(&rootfs)
                        .arg("--numeric-owner"),
                    &format!("unpacking layer {digest}"),
                )
                .await?;
                apply_whiteouts(&rootfs)?;
            }
            if found.archive {
                let _ = std::fs::remove_dir_all(&layout);
            }
            std::fs::write(&config_file, config.to_string())
                .with_context(|| format!("writing {}", config_file.display()))?;
        }
        let config = parse_config(&read_json(&config_file)?);
        Ok(Image {
            digest: found.digest.clone(),
            rootfs,
            config,
        })
    }
}

/// The program and arguments a container runs, Kubernetes' rules: `command`
/// replaces the entrypoint (and drops the image's cmd), `args` replaces the cmd.
pub fn container_argv(
    config: &ImageConfig,
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Vec<String> {
    match (command.filter(|c| !c.is_empty()), args) {
        (Some(cmd), a) => cmd.iter().chain(a.into_iter().flatten()).cloned().collect(),
        (None, Some(a)) => config.entrypoint.iter().chain(a).cloned().collect(),
        (None, None) => config
            .entrypoint
            .iter()
            .chain(&config.cmd)
            .cloned()
            .collect(),
    }
}

/// Resolves `prog` inside `rootfs` with the container's PATH; returns the path as
/// the chrooted process sees it.
pub fn resolve_in_rootfs(rootfs: &Path, prog: &str, path_var: &str) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let inside = |p: &str| rootfs.join(p.trim_start_matches('/'));
    if prog.contains('/') {
        let abs = if prog.starts_with('/') {
            prog.to_string()
        } else {
            format!("/{prog}")
        };
        if executable(&inside(&abs)) {
            return Ok(abs);
        }
        bail!("{prog} is not an executable file in the image");
    }
    for dir in path_var.split(':').filter(|d| d.starts_with('/')) {
        let cand = format!("{}/{prog}", dir.trim_end_matches('/'));
        if executable(&inside(&cand)) {
            return Ok(cand);
        }
    }
    bail!("executable {prog:?} not found in the image's PATH {path_var}")
}

/// `uid`, `uid:gid` (numeric only: a scratch image has no /etc/passwd to resolve
/// names with).
pub fn parse_user(user: &str) -> Result<(u32, Option<u32>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u
        .parse::<u32>()
        .map_err(|_| anyhow!("image user {user:?} is not numeric"))?;
    let gid = g
        .map(|g| {
            g.parse::<u32>()
                .map_err(|_| anyhow!("image group in {user:?} is not numeric"))
        })
        .transpose()?;
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_normalize() {
        assert_eq!(normalize_ref("serin"), "serin:latest");
        assert_eq!(normalize_ref("localhost/serin:0.1.0"), "serin:0.1.0");
        assert_eq!(normalize_ref("docker.io/library/serin:1"), "serin:1");
        assert_eq!(
            normalize_ref("reg:5000/team/serin"),
            "reg:5000/team/serin:latest"
        );
        assert_eq!(normalize_ref("serin@sha256:ab"), "serin@sha256:ab");
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let c = ImageConfig {
            entrypoint: vec!["/serin".into()],
            cmd: vec!["run".into()],
            ..ImageConfig::default()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(container_argv(&c, None, None), s(&["/serin", "run"]));
        let a = s(&["run", "--provider=istio"]);
        assert_eq!(
            container_argv(&c, None, Some(&a)),
            s(&["/serin", "run", "--provider=istio"])
        );
        let cmd = s(&["/other"]);
        assert_eq!(container_argv(&c, Some(&cmd), None), s(&["/other"]));
        assert_eq!(
            container_argv(&c, Some(&cmd), Some(&a)),
            s(&["/other", "run", "--provider=istio"])
        );
    }

    #[test]
    fn config_and_index_parse() {
        let cfg = parse_config(&json!({"config": {
            "Entrypoint": ["/serin"], "Cmd": ["run"], "Env": ["PATH=/bin", "A=b=c"],
            "WorkingDir": "", "User": "65532:65532"}}));
        assert_eq!(
            cfg.env,
            vec![("PATH".into(), "/bin".into()), ("A".into(), "b=c".into())]
        );
        assert_eq!(cfg.working_dir, None);
        assert_eq!(
            parse_user(cfg.user.as_deref().unwrap_or("")).ok(),
            Some((65532, Some(65532)))
        );
        assert!(parse_user("nonroot").is_err());
        let idx = json!({"manifests": [{"digest": "sha256:aa",
            "annotations": {"org.opencontainers.image.ref.name": "localhost/serin:0.1.0"}}]});
        assert_eq!(
            index_refs(&idx),
            vec![("serin:0.1.0".into(), "sha256:aa".into())]
        );
        assert!(blob_path("sha256:../../etc").is_err());
        assert_eq!(
            blob_path("sha256:ab").ok(),
            Some(PathBuf::from("blobs/sha256/ab"))
        );
    }

    #[test]
    fn whiteouts_remove_lower_files() -> Result<()> {
        let root = std::env::temp_dir().join(format!("serin-wh-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc/sub"))?;
        std::fs::write(root.join("etc/gone"), "x")?;
        std::fs::write(root.join("etc/.wh.gone"), "")?;
        std::fs::write(root.join("etc/.wh.sub"), "")?;
        std::fs::write(root.join("etc/kept"), "x")?;
        std::fs::write(root.join(".wh..wh..opq"), "")?;
        apply_whiteouts(&root)?;
        let mut left: Vec<String> = std::fs::read_dir(root.join("etc"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["kept"]);
        assert!(!root.join(".wh..wh..opq").exists());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn programs_resolve_inside_the_rootfs() -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("serin-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("usr/bin"))?;
        std::fs::write(root.join("serin"), "")?;
        std::fs::set_permissions(root.join("serin"), std::fs::Permissions::from_mode(0o755))?;
        std::fs::write(root.join("usr/bin/tool"), "")?;
        std::fs::set_permissions(
            root.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )?;
        assert_eq!(resolve_in_rootfs(&root, "/serin", "/bin")?, "/serin");
        assert_eq!(
            resolve_in_rootfs(&root, "tool", "/bin:/usr/bin")?,
            "/usr/bin/tool"
        );
        // The host's /bin/sh is not the image's.
        assert!(resolve_in_rootfs(&root, "sh", "/bin:/usr/bin").is_err());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }
}
