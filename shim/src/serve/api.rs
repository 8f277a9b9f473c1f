//! The HTTP API's request and response bodies, and the OpenAPI document generated from them
//! and from the handlers' annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// The image (an OCI layout directory, as `box run` takes it). A warm pool of this image
    /// serves the request when one has a sandbox ready.
    pub image: String,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// `KEY=VALUE`, over the image's environment, for every command.
    #[serde(default)]
    pub env: Vec<String>,
    /// Free-form labels, for listing.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Seconds until the sandbox is destroyed (default 300, at most a day).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    pub image: String,
    pub state: String,
    pub metadata: BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub expires_at: u64,
    /// Whether a warm pool served it.
    pub from_pool: bool,
}

/// `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout_s: u64,
}

/// `POST /v1/sandboxes/{id}/commands`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCommand {
    /// argv; `cmd[0]` is looked up in PATH.
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Answer at once with the command's id instead of streaming its output.
    #[serde(default)]
    pub background: bool,
}

/// One line of a command's NDJSON stream: output as it happens, then its exit (an `error`
/// line before it if an output stream broke, or instead of it if the command never ran).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CommandEvent {
    Stdout { data: String },
    Stderr { data: String },
    Exit { code: i32 },
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandInfo {
    pub id: String,
    pub pid: u32,
    pub cmd: Vec<String>,
}

/// Every error body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Box sandbox API",
        description = "Pooled microVM sandboxes: create, run commands, destroy."
    ),
    paths(
        super::handlers::create_sandbox,
        super::handlers::list_sandboxes,
        super::handlers::get_sandbox,
        super::handlers::delete_sandbox,
        super::handlers::set_timeout,
        super::handlers::run_command,
        super::handlers::list_commands,
        super::handlers::kill_command,
        super::handlers::metrics,
    ),
    components(schemas(
        CreateSandbox,
        SandboxInfo,
        SetTimeout,
        RunCommand,
        CommandEvent,
        CommandInfo,
        ErrorBody
    ))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    /// The document users and schemathesis read is the one checked in (`shim/openapi.json`):
    /// a change to the API shows in review. `BOX_UPDATE_OPENAPI=1` rewrites it.
    #[test]
    fn the_checked_in_openapi_document_is_current() {
        let doc = ApiDoc::openapi().to_pretty_json().unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        if std::env::var_os("BOX_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &doc).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == doc,
            "shim/openapi.json is stale: run BOX_UPDATE_OPENAPI=1 cargo test -p box-shim openapi"
        );
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert!(v["paths"]["/v1/sandboxes"]["post"].is_object());
    }
}
