//! What containerd hands the shim, read for a microVM: which role a container plays in its
//! pod, the parts of its OCI spec that mean something inside the guest, and its root disk.

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use serde_json::Value;

/// CRI's annotations (the same keys Kata and runc's shim read).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The one snapshotter whose mounts are a block image (see [`root_disk`]).
pub const SNAPSHOTTER: &str = "blockfile";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, String),
    #[error(
        "container {id}: its rootfs is {what}; Box boots containers from block images: configure containerd's {SNAPSHOTTER} snapshotter (fs_type = \"ext4\") for this runtime"
    )]
    Snapshotter { id: String, what: String },
}

/// The part a container plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A pod's sandbox (pause) container: the VM itself, nothing runs for it.
    PodSandbox,
    /// An application container of the pod whose sandbox has this id.
    InPod(String),
    /// No CRI annotations (`ctr run`): a VM of its own running this container.
    Standalone,
}

/// The bundle's config.json.
pub fn load(bundle: &Path) -> Result<Value, SpecError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| SpecError::Read(path.clone(), e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| SpecError::Read(path, e.to_string()))
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

pub fn role(spec: &Value) -> Role {
    match (
        annotation(spec, CONTAINER_TYPE),
        annotation(spec, SANDBOX_ID),
    ) {
        (Some("sandbox"), _) => Role::PodSandbox,
        (_, Some(sandbox)) if !sandbox.is_empty() => Role::InPod(sandbox.to_string()),
        _ => Role::Standalone,
    }
}

/// The shim a container belongs with: its pod's, so one shim (and one VM) serves a pod.
pub fn grouping(spec: &Value, id: &str) -> String {
    match role(spec) {
        Role::InPod(sandbox) => sandbox,
        Role::PodSandbox | Role::Standalone => id.to_string(),
    }
}

/// The network namespace the VM's NIC joins: the one CRI made for the pod (CNI wired it).
/// None: the container asked for a new, empty namespace (`ctr run` without `--net-host`),
/// which a VM gives anyway.
pub fn netns(spec: &Value) -> Option<PathBuf> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Mount types that are made fresh inside the guest; everything else in a containerd spec
/// is a bind of a host path (CRI's /etc/hosts, resolv.conf, the pod's shm, service account
/// tokens), which a VM cannot see.
const GUEST_MOUNT_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// The spec as guest-init gets it: host bind mounts dropped (guest-init writes the guest's
/// own /etc/hosts, hostname and resolv.conf), namespace paths dropped (they name host
/// processes; guest-init gives each container its own PID namespace in the VM), and the
/// root at `rootfs` where the disk is mounted.
pub fn for_guest(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        mounts.retain(|m| {
            m.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| GUEST_MOUNT_TYPES.contains(&t))
        });
        // CRI binds the pod's shared /dev/shm from the host: in the VM the pod's containers
        // get a tmpfs of their own there instead (as docker's default gives).
        let has_shm = mounts
            .iter()
            .any(|m| m.get("destination").and_then(Value::as_str) == Some("/dev/shm"));
        if !has_shm {
            mounts.push(serde_json::json!({
                "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            }));
        }
    }
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("namespaces");
        linux.remove("cgroupsPath");
    }
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": spec.pointer("/root/readonly").and_then(Value::as_bool).unwrap_or(false)});
    spec
}

/// The container's root disk: the one ext4 image the blockfile snapshotter mounts with
/// `loop`. Anything else (overlay layers, a host directory) is refused naming the fix.
pub fn root_disk(id: &str, rootfs: &[Mount]) -> Result<PathBuf, SpecError> {
    let refuse = |what: String| SpecError::Snapshotter {
        id: id.to_string(),
        what,
    };
    match rootfs {
        [] => Err(refuse("a host directory (no mounts)".into())),
        [m] if m.type_ == "ext4" && !m.source.is_empty() => Ok(PathBuf::from(&m.source)),
        [m] => Err(refuse(format!("a {:?} mount of {}", m.type_, m.source))),
        many => Err(refuse(format!(
            "{} mounts ({})",
            many.len(),
            many.iter()
                .map(|m| m.type_.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `Some(cpus, memory MiB)` asked for the VM through annotations on the sandbox container.
pub fn vm_size(spec: &Value) -> (Option<u32>, Option<u32>) {
    let num = |k: &str| annotation(spec, k).and_then(|v| v.parse().ok());
    (num("io.box.cpus"), num("io.box.memory-mib"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mount(t: &str, src: &str) -> Mount {
        Mount {
            type_: t.into(),
            source: src.into(),
            ..Default::default()
        }
    }

    #[test]
    fn roles_follow_cri_annotations() {
        let sandbox = json!({"annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "p1"}});
        let app = json!({"annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "p1"}});
        let plain = json!({"process": {}});
        assert_eq!(role(&sandbox), Role::PodSandbox);
        assert_eq!(role(&app), Role::InPod("p1".into()));
        assert_eq!(role(&plain), Role::Standalone);
        assert_eq!(grouping(&sandbox, "p1"), "p1");
        assert_eq!(grouping(&app, "c1"), "p1");
        assert_eq!(grouping(&plain, "c2"), "c2");
    }

    #[test]
    fn the_pod_netns_comes_from_the_spec() {
        let s = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}});
        assert_eq!(netns(&s), Some(PathBuf::from("/var/run/netns/cni-1")));
        let s = json!({"linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(netns(&s), None);
    }

    #[test]
    fn host_binds_and_namespaces_stay_on_the_host() {
        let s = json!({
            "root": {"path": "/var/lib/x/rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/hosts", "options": ["rbind"]},
                {"destination": "/dev/shm", "source": "/run/containerd/shm", "options": ["rbind"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}], "cgroupsPath": "/k8s/x", "resources": {"memory": {"limit": 1}}}
        });
        let g = for_guest(&s);
        let dests: Vec<&str> = g["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(dests, ["/proc", "/dev", "/dev/shm"]);
        assert_eq!(g["mounts"][2]["type"], "tmpfs");
        assert!(g["linux"].get("namespaces").is_none());
        assert!(g["linux"].get("cgroupsPath").is_none());
        assert_eq!(g["linux"]["resources"]["memory"]["limit"], 1);
        assert_eq!(g["root"]["path"], "rootfs");
    }

    #[test]
    fn only_a_blockfile_image_is_a_root_disk() {
        assert_eq!(
            root_disk("c", &[mount("ext4", "/snap/7")]),
            Ok(PathBuf::from("/snap/7"))
        );
        for bad in [
            vec![],
            vec![mount("overlay", "overlay")],
            vec![mount("ext4", "/a"), mount("ext4", "/b")],
        ] {
            let e = root_disk("c", &bad).unwrap_err().to_string();
            assert!(e.contains("blockfile"), "{e}");
        }
    }
}
