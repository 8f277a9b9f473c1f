//! What the client sees of the node it runs on: processes, network namespaces, a pod's
//! address.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Box processes (the VMM, the containerd shim) and CNI network namespaces still on the node.
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else {
                continue;
            };
            let comm = comm.trim_end();
            // comm is cut at 15 bytes: `containerd-shim-box-v2` reads `containerd-shim`; the
            // command line tells it from another runtime's shim (a zombie has none: count it).
            let argv0 = fs::read(entry.path().join("cmdline"))
                .ok()
                .and_then(|c| {
                    c.split(|&b| b == 0)
                        .next()
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                })
                .unwrap_or_default();
            let shim = comm == "containerd-shim"
                && (argv0.is_empty() || argv0.contains("containerd-shim-box"));
            if comm == "box-vmm" || shim {
                found.push(format!("pid {pid} {comm} [{argv0}]"));
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("cni-") {
                found.push(format!("/run/netns/{name}"));
            }
        }
    }
    found.sort();
    found
}

/// This node's boot id, to tell a pod's VM from the node.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// One HTTP/1.0 GET of `/` at `ip:port`; the whole response.
pub async fn http_get(ip: IpAddr, port: u16, timeout: Duration) -> Result<String> {
    let addr = SocketAddr::new(ip, port);
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .context("send")?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.context("read")?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{addr}: no answer within {timeout:?}"))?
}
