//! VM configuration: command-line flags and the equivalent JSON file.
//!
//! Both front ends produce one [`VmConfig`]; flags given on the command line
//! override the same field from `--config`, so a shim can keep a base file and
//! vary one value per VM.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::arch::x86_64::layout::MAX_VIRTIO_DEVICES;
use crate::error::ConfigError;

/// Most vCPUs a VM may have (MADT/APIC ids here are 8-bit and we keep a small IRQ budget).
pub const MAX_VCPUS: u8 = 32;
/// Smallest useful guest memory, in MiB.
pub const MIN_MEM_MIB: u64 = 16;
/// Largest guest memory, in MiB (64 GiB).
pub const MAX_MEM_MIB: u64 = 64 * 1024;

/// Kernel command line used when none is given. `quiet` because every console byte is a
/// trapped port write: a stock kernel's 21 KB of boot chatter cost 41k exits and made boot
/// 1.76x slower (nested node). It keeps what a failure needs: `quiet` is console loglevel 4,
/// so errors, every panic line and oops header still reach the console (and the Failed
/// record's tail). `reboot=k` makes `reboot` go through the i8042 so it reaches us as a
/// reset; `panic=1` turns a guest panic into a reset instead of a hang; `earlyprintk` so that
/// a guest stuck before its console driver registers still shows how far it got.
///
/// `cryptomgr.notests`: Debian's kernel runs the crypto self-tests at every boot; skipping
/// them took boot to userspace from 4.7 s to 3.6 s in the nested node (3 runs each,
/// alternated). Other usual microVM parameters were tried and left out because they made
/// boot slower there, not faster: `8250.nr_uarts=1 rcupdate.rcu_expedited=1 no_timer_check
/// tsc=reliable` together gave 4.3-4.8 s against 3.6 s without them.
pub const DEFAULT_CMDLINE: &str =
    "quiet cryptomgr.notests earlyprintk=serial,ttyS0 console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

const EXIT_CONTRACT: &str = "\
EXIT STATUS:
  0   guest powered off (ACPI S5 through the sleep control register, e.g. `poweroff -f`)
  10  guest requested a reset (`reboot -f`, i8042 reset, ACPI reset register)
  11  guest crashed: triple fault or KVM internal/emulation error (vCPU registers on stderr)
  12  configuration error (the message names the bad flag or path)
  13  host error (no usable /dev/kvm, PVM KVM, missing KVM capability, host I/O failure)

On a PVM host (/sys/module/kvm_pvm exists) box-vmm refuses to boot a kernel and exits 13:
PVM cannot run a standard Linux kernel. Use the nested node: `cargo xtask node -- <command>`.";

/// Command-line interface of `box-vmm`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "box-vmm",
    version,
    about = "Box microVM monitor: boots a Linux kernel in a KVM microVM with serial, virtio-blk and virtio-vsock",
    after_help = EXIT_CONTRACT
)]
pub struct Cli {
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed) loaded high in guest memory.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line. Default: "quiet cryptomgr.notests earlyprintk=serial,ttyS0 console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd".
    /// box-vmm appends `virtio_mmio.device=` entries for its devices.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1-32). Default 1.
    #[arg(long, value_name = "N")]
    pub cpus: Option<u8>,
    /// Guest memory in MiB (16-65536). Default 256.
    #[arg(long, value_name = "MIB")]
    pub mem: Option<u64>,
    /// Raw disk image exposed as virtio-blk (/dev/vda, /dev/vdb, ... in order). Append ",ro"
    /// for read-only: guest writes then fail with an I/O error. Repeatable.
    #[arg(long, value_name = "PATH[,ro]")]
    pub disk: Vec<String>,
    /// Empty virtio-blk slots after the disks, for disks attached while the VM runs (through
    /// --api-sock); the guest sees each as a disk of 0 sectors until then.
    #[arg(long, value_name = "N")]
    pub disk_slots: Option<usize>,
    /// The control socket: JSON requests while the VM runs (attach_disk, detach_disk; the
    /// disk's file passed as a descriptor). See box_vmm::control.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Host unix socket for virtio-vsock (hybrid protocol). Host→guest: connect to PATH, write
    /// "CONNECT <port>\n", read "OK <hostport>\n", then raw bytes. Guest→host port P: box-vmm
    /// connects to "PATH_P".
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Guest vsock CID (>= 3). Default 3.
    #[arg(long, value_name = "CID")]
    pub vsock_cid: Option<u64>,
    /// virtio-net on a TAP: opened by name (created when this process may), or an inherited
    /// fd already attached with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (how a jailed VMM gets one).
    /// Default MAC 02:b0:c5:00:00:01.
    #[arg(long, value_name = "tap=NAME|fd=N[,mac=MAC]")]
    pub net: Option<String>,
    /// Where the serial console (ttyS0) goes: a file path (created/truncated) or "stdout".
    /// Default stdout.
    #[arg(long, value_name = "PATH|stdout")]
    pub console: Option<String>,
    /// Report on stderr the time from process start to the guest's first write to I/O port 0x440
    /// (guest init: `outb` any value there when userspace is up), and to the first console byte.
    #[arg(long)]
    pub boot_timer: bool,
    /// Jail the VMM (as Firecracker's jailer does): new mount, PID, IPC, UTS and network
    /// namespaces, DIR as its root (kernel, initrd and disks bound in; --vsock-uds, --api-sock and
    /// --console must lie inside DIR), running as --jail-uid/--jail-gid without capabilities.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    #[arg(long, value_name = "UID")]
    pub jail_uid: Option<u32>,
    #[arg(long, value_name = "GID")]
    pub jail_gid: Option<u32>,
    /// A cgroup v2 directory (limits set by the caller) the jailed VMM moves itself into.
    #[arg(long, value_name = "DIR")]
    pub jail_cgroup: Option<PathBuf>,
    /// Do not install the seccomp syscall filter on VMM threads (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// JSON config file with the same fields (see VmConfig); flags override it.
    #[arg(long, value_name = "FILE.json")]
    pub config: Option<PathBuf>,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

impl DiskConfig {
    /// Parses `PATH` or `PATH,ro`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let (path, read_only) = match spec.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some(_) => return Err(ConfigError::BadDiskSpec(spec.to_string())),
            None => (spec, false),
        };
        if path.is_empty() {
            return Err(ConfigError::BadDiskSpec(spec.to_string()));
        }
        Ok(DiskConfig {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// virtio-vsock backed by the hybrid unix-socket protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Listening socket path; guest-initiated connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
    /// Guest context id.
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

fn default_cid() -> u64 {
    3
}

/// Where the TAP of the virtio-net device comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TapSource {
    /// Opened by name.
    Tap(String),
    /// Inherited, already attached.
    Fd(i32),
}

/// One virtio-net device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub source: TapSource,
    /// Guest MAC.
    #[serde(default = "default_mac")]
    pub mac: [u8; 6],
}

/// A locally administered unicast MAC.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0xb0, 0xc5, 0x00, 0x00, 0x01];

fn default_mac() -> [u8; 6] {
    DEFAULT_MAC
}

impl NetConfig {
    /// Parses `tap=NAME` or `fd=N`, optionally followed by `,mac=XX:XX:XX:XX:XX:XX`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadNetSpec(spec.to_string());
        let mut parts = spec.split(',');
        let source = match parts.next().and_then(|p| p.split_once('=')) {
            Some(("tap", n)) if !n.is_empty() && n.len() < 16 => TapSource::Tap(n.to_string()),
            Some(("fd", n)) => TapSource::Fd(n.parse().ok().filter(|&f| f >= 0).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        let mut mac = DEFAULT_MAC;
        for p in parts {
            match p.split_once('=') {
                Some(("mac", m)) => mac = parse_mac(m).ok_or_else(bad)?,
                _ => return Err(bad()),
            }
        }
        Ok(NetConfig { source, mac })
    }
}

/// `02:b0:c5:00:00:01` → bytes; a multicast address (low bit of the first byte) is refused.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, part) in s.split(':').enumerate() {
        if i >= 6 || part.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6 && mac[0] & 1 == 0).then_some(mac)
}

/// Destination of the serial console.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Console {
    /// The VMM's own stdout.
    #[default]
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
}

impl Cli {
    /// The jail the flags ask for, if any.
    pub fn jail(&self) -> Result<Option<crate::jail::JailConfig>, ConfigError> {
        let Some(root) = &self.jail else {
            return Ok(None);
        };
        let (Some(uid), Some(gid)) = (self.jail_uid, self.jail_gid) else {
            return Err(ConfigError::JailWithoutIds);
        };
        Ok(Some(crate::jail::JailConfig {
            root: root.clone(),
            uid,
            gid,
            cgroup: self.jail_cgroup.clone(),
        }))
    }
}

impl Console {
    fn parse(s: &str) -> Self {
        if s == "stdout" {
            Console::Stdout
        } else {
            Console::File(PathBuf::from(s))
        }
    }
}

impl Serialize for Console {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Console::Stdout => s.serialize_str("stdout"),
            Console::File(p) => s.serialize_str(&p.to_string_lossy()),
        }
    }
}

impl<'de> Deserialize<'de> for Console {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Console::parse(&s))
    }
}

/// The whole VM description. This is also the JSON config file schema:
/// `{"kernel": "...", "initrd": "...", "cmdline": "...", "cpus": 1, "mem_mib": 256,
///   "disks": [{"path": "...", "read_only": true}],
///   "vsock": {"uds_path": "...", "guest_cid": 3}, "console": "stdout",
///   "boot_timer": false, "seccomp": true}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel image (ELF or bzImage).
    #[serde(default)]
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (device strings are appended to it).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// vCPU count.
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_mem")]
    pub mem_mib: u64,
    /// virtio-blk disks in guest order.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Empty disk slots (after `disks`), filled through the control socket.
    #[serde(default)]
    pub disk_slots: usize,
    /// The control socket.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Optional virtio-vsock.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Optional virtio-net.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Serial console destination.
    #[serde(default)]
    pub console: Console,
    /// Report boot milestones on stderr.
    #[serde(default)]
    pub boot_timer: bool,
    /// Install the seccomp filter.
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}
fn default_cpus() -> u8 {
    1
}
fn default_mem() -> u64 {
    256
}
fn default_true() -> bool {
    true
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: default_cmdline(),
            cpus: default_cpus(),
            mem_mib: default_mem(),
            disks: Vec::new(),
            disk_slots: 0,
            api_sock: None,
            vsock: None,
            net: None,
            console: Console::Stdout,
            boot_timer: false,
            seccomp: true,
        }
    }
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ConfigFileRead {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ConfigFileParse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the config from parsed flags (loading `--config` first) and validates it.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let mut cfg = match &cli.config {
            Some(p) => VmConfig::from_file(p)?,
            None => VmConfig::default(),
        };
        if let Some(k) = &cli.kernel {
            cfg.kernel = k.clone();
        }
        if let Some(i) = &cli.initrd {
            cfg.initrd = Some(i.clone());
        }
        if let Some(c) = &cli.cmdline {
            cfg.cmdline = c.clone();
        }
        if let Some(c) = cli.cpus {
            cfg.cpus = c;
        }
        if let Some(m) = cli.mem {
            cfg.mem_mib = m;
        }
        if !cli.disk.is_empty() {
            cfg.disks = cli
                .disk
                .iter()
                .map(|d| DiskConfig::parse(d))
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = cli.disk_slots {
            cfg.disk_slots = n;
        }
        if let Some(p) = &cli.api_sock {
            cfg.api_sock = Some(p.clone());
        }
        match (&cli.vsock_uds, cli.vsock_cid) {
            (Some(uds), cid) => {
                cfg.vsock = Some(VsockConfig {
                    uds_path: uds.clone(),
                    guest_cid: cid.unwrap_or(default_cid()),
                })
            }
            (None, Some(cid)) => match cfg.vsock.as_mut() {
                Some(v) => v.guest_cid = cid,
                None => return Err(ConfigError::CidWithoutUds),
            },
            (None, None) => {}
        }
        if let Some(n) = &cli.net {
            cfg.net = Some(NetConfig::parse(n)?);
        }
        if let Some(c) = &cli.console {
            cfg.console = Console::parse(c);
        }
        cfg.boot_timer |= cli.boot_timer;
        if cli.no_seccomp {
            cfg.seccomp = false;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every value before any host resource is touched.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if !is_readable_file(&self.kernel) {
            return Err(ConfigError::MissingKernel(self.kernel.clone()));
        }
        if let Some(i) = &self.initrd {
            if !is_readable_file(i) {
                return Err(ConfigError::MissingInitrd(i.clone()));
            }
        }
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ConfigError::BadCpus(self.cpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::BadMem(self.mem_mib));
        }
        for d in &self.disks {
            if !is_readable_file(&d.path) {
                return Err(ConfigError::MissingDisk(d.path.clone()));
            }
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
                return Err(ConfigError::BadCid(v.guest_cid));
            }
        }
        if let Some(n) = &self.net {
            if n.mac[0] & 1 == 1 {
                return Err(ConfigError::BadNetSpec(format!("{:02x?}", n.mac)));
            }
        }
        if self.disk_slots > 0 && self.api_sock.is_none() {
            return Err(ConfigError::SlotsWithoutApi);
        }
        let n = self.disks.len()
            + self.disk_slots
            + usize::from(self.vsock.is_some())
            + usize::from(self.net.is_some());
        if n > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(n));
        }
        Ok(())
    }
}

fn is_readable_file(p: &Path) -> bool {
    std::fs::File::open(p)
        .and_then(|f| f.metadata())
        .map(|m| m.is_file())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_spec_parsing() {
        assert_eq!(
            NetConfig::parse("tap=tap0").unwrap(),
            NetConfig {
                source: TapSource::Tap("tap0".into()),
                mac: DEFAULT_MAC
            }
        );
        assert_eq!(
            NetConfig::parse("fd=7,mac=02:00:00:aa:bb:cc").unwrap(),
            NetConfig {
                source: TapSource::Fd(7),
                mac: [2, 0, 0, 0xaa, 0xbb, 0xcc]
            }
        );
        for bad in [
            "",
            "tap=",
            "tap=far-too-long-name",
            "fd=-1",
            "fd=x",
            "eth0",
            "tap=t,mac=01:00:00:00:00:00",
            "tap=t,mac=02:00:00:00:00",
            "tap=t,mac=02:00:00:00:00:00:00",
            "tap=t,speed=10",
        ] {
            assert!(
                matches!(NetConfig::parse(bad), Err(ConfigError::BadNetSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_default_command_line_is_quiet() {
        // Console output is the costliest exit of a boot: the default keeps it to errors.
        let words: Vec<&str> = DEFAULT_CMDLINE.split_whitespace().collect();
        assert!(words.contains(&"quiet"), "{DEFAULT_CMDLINE}");
        assert!(
            !words.iter().any(|w| w.starts_with("loglevel=")),
            "{DEFAULT_CMDLINE}"
        );
        assert!(words.contains(&"panic=1"), "{DEFAULT_CMDLINE}");
        assert!(words.contains(&"cryptomgr.notests"), "{DEFAULT_CMDLINE}");
    }

    fn tmpfile(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("box-vmm-cfg-{}-{name}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn disk_spec_parsing() {
        assert_eq!(
            DiskConfig::parse("/a/b.img,ro").unwrap(),
            DiskConfig {
                path: "/a/b.img".into(),
                read_only: true
            }
        );
        assert!(!DiskConfig::parse("/a/b.img").unwrap().read_only);
        assert!(DiskConfig::parse("/a,zz").is_err());
        assert!(DiskConfig::parse(",ro").is_err());
    }

    #[test]
    fn missing_kernel_is_named() {
        let cli = Cli::parse_from(["box-vmm", "--kernel", "/nonexistent/vmlinux"]);
        let err = VmConfig::from_cli(&cli).unwrap_err();
        assert!(matches!(err, ConfigError::MissingKernel(_)));
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn no_kernel_is_an_error() {
        let cli = Cli::parse_from(["box-vmm"]);
        assert!(matches!(
            VmConfig::from_cli(&cli).unwrap_err(),
            ConfigError::NoKernel
        ));
    }

    #[test]
    fn flags_override_json() {
        let k = tmpfile("kernel");
        let json = std::env::temp_dir().join(format!("box-vmm-cfg-{}.json", std::process::id()));
        std::fs::write(
            &json,
            format!(
                r#"{{"kernel": "{}", "cpus": 2, "mem_mib": 128, "console": "/tmp/c.log",
                    "vsock": {{"uds_path": "/tmp/v.sock"}}}}"#,
                k.display()
            ),
        )
        .unwrap();
        let cli = Cli::parse_from([
            "box-vmm",
            "--config",
            json.to_str().unwrap(),
            "--mem",
            "512",
            "--no-seccomp",
        ]);
        let cfg = VmConfig::from_cli(&cli).unwrap();
        assert_eq!(cfg.cpus, 2);
        assert_eq!(cfg.mem_mib, 512);
        assert_eq!(cfg.console, Console::File("/tmp/c.log".into()));
        assert_eq!(cfg.vsock.as_ref().unwrap().guest_cid, 3);
        assert!(!cfg.seccomp);
        // Round trip: the serialized form is an accepted config file.
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_values_are_rejected() {
        let k = tmpfile("kernel2");
        let mut cfg = VmConfig {
            kernel: k,
            ..Default::default()
        };
        cfg.cpus = 0;
        assert!(matches!(cfg.validate(), Err(ConfigError::BadCpus(0))));
        cfg.cpus = 1;
        cfg.mem_mib = 1;
        assert!(matches!(cfg.validate(), Err(ConfigError::BadMem(1))));
        cfg.mem_mib = 64;
        cfg.vsock = Some(VsockConfig {
            uds_path: "/tmp/x".into(),
            guest_cid: 2,
        });
        assert!(matches!(cfg.validate(), Err(ConfigError::BadCid(2))));
        cfg.vsock = None;
        cfg.disks.push(DiskConfig {
            path: "/nonexistent.img".into(),
            read_only: false,
        });
        let e = cfg.validate().unwrap_err();
        assert!(e.to_string().contains("/nonexistent.img"));
    }

    #[test]
    fn unknown_json_field_is_rejected() {
        let json = std::env::temp_dir().join(format!("box-vmm-bad-{}.json", std::process::id()));
        std::fs::write(&json, r#"{"kernal": "/x"}"#).unwrap();
        assert!(matches!(
            VmConfig::from_file(&json),
            Err(ConfigError::ConfigFileParse { .. })
        ));
    }
}
