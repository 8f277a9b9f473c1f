//! Box's host runtime library: the client for guest-init's API, and (in later issues) the
//! sandbox lifecycle, the `box` CLI and the containerd shim built on it.

pub mod agent_client;
