//! The API's handlers: convert, call the [`State`], convert back. Errors are JSON bodies with
//! the status that says whose fault it is (400 bad request, 404 unknown id, 429 host full,
//! 503 a sandbox that could not be booted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use box_guest_init::api::stream::StreamKind;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::api::{self, CommandEvent, CommandInfo, ErrorBody, SandboxInfo};
use super::{Live, State};
use crate::agent_client::StdioRequest;
use crate::sandbox::{self, SandboxError};

type S = AxState<Arc<State>>;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError(e.status(), e.body_text())
    }
}

/// Unknown routes answer with a JSON body too.
pub async fn fallback() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

fn not_found(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no sandbox {id}"))
}

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> ApiError {
        let status = match &e {
            SandboxError::InvalidOption(_)
            | SandboxError::Image(_)
            | SandboxError::CannotRun { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

fn live(state: &State, id: &str) -> Result<Arc<Live>, ApiError> {
    state
        .live
        .lock()
        .unwrap()
        .get(id)
        .cloned()
        .ok_or_else(|| not_found(id))
}

#[utoipa::path(post, tag = "box", path = "/v1/sandboxes", request_body = api::CreateSandbox,
    responses((status = 201, body = SandboxInfo), (status = 400, body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_sandbox(
    AxState(state): S,
    req: Result<Json<api::CreateSandbox>, JsonRejection>,
) -> Result<(StatusCode, Json<SandboxInfo>), ApiError> {
    let Json(req) = req?;
    // A place is reserved before the boot, so concurrent creates never pass the limit.
    let _place = state.reserve().map_err(|n| {
        ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{n} sandboxes are running or starting, the most this server runs at once"),
        )
    })?;
    // On a task of its own: a client that goes away mid-boot does not cut the boot short
    // (the sandbox is made and handed to nobody, and expires at its timeout).
    let st = state.clone();
    let live = tokio::spawn(async move { st.acquire(&req).await })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let info = live.info.lock().unwrap().clone();
    Ok((StatusCode::CREATED, Json(info)))
}

/// `?metadata.KEY=VALUE` filters (all must match).
#[utoipa::path(get, tag = "box", path = "/v1/sandboxes", responses((status = 200, body = [SandboxInfo])))]
pub async fn list_sandboxes(
    AxState(state): S,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Vec<SandboxInfo>> {
    let wanted: Vec<(&str, &str)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?, v.as_str())))
        .collect();
    let mut out: Vec<SandboxInfo> = state
        .live
        .lock()
        .unwrap()
        .values()
        .map(|l| l.info.lock().unwrap().clone())
        .filter(|i| {
            wanted
                .iter()
                .all(|(k, v)| i.metadata.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Json(out)
}

#[utoipa::path(get, tag = "box", path = "/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody)))]
pub async fn get_sandbox(
    AxState(state): S,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, ApiError> {
    let l = live(&state, &id)?;
    let info = l.info.lock().unwrap().clone();
    Ok(Json(info))
}

#[utoipa::path(delete, tag = "box", path = "/v1/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_sandbox(
    AxState(state): S,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.destroy(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

#[utoipa::path(post, tag = "box", path = "/v1/sandboxes/{id}/timeout", params(("id" = String, Path)),
    request_body = api::SetTimeout,
    responses((status = 200, body = SandboxInfo), (status = 404, body = ErrorBody)))]
pub async fn set_timeout(
    AxState(state): S,
    Path(id): Path<String>,
    req: Result<Json<api::SetTimeout>, JsonRejection>,
) -> Result<Json<SandboxInfo>, ApiError> {
    let Json(req) = req?;
    let l = live(&state, &id)?;
    let t = Duration::from_secs(req.timeout_s).min(super::MAX_TIMEOUT);
    l.deadline.send_replace(Instant::now() + t);
    let mut info = l.info.lock().unwrap();
    info.expires_at = crate::sandbox::state::now() + t.as_secs();
    Ok(Json(info.clone()))
}

fn line(ev: &CommandEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Runs a command in the sandbox. In the foreground the answer is an NDJSON stream (`start`,
/// `stdout`/`stderr` chunks as they happen, then `exit`); with `background` it is the
/// command's id at once.
#[utoipa::path(post, tag = "box", path = "/v1/sandboxes/{id}/commands", params(("id" = String, Path)),
    request_body = api::RunCommand,
    responses((status = 200, description = "NDJSON stream of CommandEvent", body = CommandEvent),
              (status = 201, body = CommandInfo), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn run_command(
    AxState(state): S,
    Path(id): Path<String>,
    req: Result<Json<api::RunCommand>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = req?;
    let l = live(&state, &id)?;
    if req.cmd.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "cmd is empty".into()));
    }
    sandbox::validate_env(&req.env)?;
    let config = &l.sandbox.record.config;
    let (user, cwd) = (&config.user, &config.cwd);
    let env = sandbox::merge_env(&[&l.env, &req.env]);
    let spec = sandbox::process_spec(
        &req.cmd,
        &env,
        req.cwd.as_deref().unwrap_or(cwd),
        false,
        user,
    );
    let exec_id = format!("cmd-{}", sandbox::random_hex(6));
    if req.background {
        let r = l
            .sandbox
            .client
            .run_process(
                l.sandbox.container_id(),
                &exec_id,
                &spec,
                &StdioRequest::default(),
                false,
            )
            .await
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
        let info = CommandInfo {
            id: exec_id.clone(),
            pid: r.pid,
            cmd: req.cmd.clone(),
        };
        l.commands.lock().unwrap().insert(exec_id, info.clone());
        return Ok((StatusCode::CREATED, Json(info)).into_response());
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(stream_command(l, exec_id, spec, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// One exec with its stdout and stderr on their own connections, forwarded line by line as
/// they arrive; the exit last, after both streams ended.
async fn stream_command(
    l: Arc<Live>,
    exec_id: String,
    spec: serde_json::Value,
    tx: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
) {
    let io = StdioRequest {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let id = l.sandbox.container_id().to_string();
    let pump = |kind: StreamKind| {
        let (client, id, exec_id, tx) = (
            l.sandbox.client.clone(),
            id.clone(),
            exec_id.clone(),
            tx.clone(),
        );
        async move {
            let mut s = match client.open_stream(&id, &exec_id, kind).await {
                Ok(s) => s,
                Err(e) => return Err(e.to_string()),
            };
            let mut buf = vec![0u8; 16 * 1024];
            // Bytes of a UTF-8 character cut by a read boundary wait for the next read.
            let mut carry: Vec<u8> = Vec::new();
            loop {
                let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    if !carry.is_empty() {
                        let data = String::from_utf8_lossy(&carry).into_owned();
                        let _ = tx.send(Ok(line(&event(kind, data)))).await;
                    }
                    return Ok(());
                }
                carry.extend_from_slice(&buf[..n]);
                let cut = utf8_prefix(&carry);
                let data = String::from_utf8_lossy(&carry[..cut]).into_owned();
                carry.drain(..cut);
                if !data.is_empty() && tx.send(Ok(line(&event(kind, data)))).await.is_err() {
                    return Ok(());
                }
            }
        }
    };
    let run = l
        .sandbox
        .client
        .run_process(&id, &exec_id, &spec, &io, true);
    let work = async { tokio::join!(pump(StreamKind::Stdout), pump(StreamKind::Stderr), run) };
    // A client that goes away takes its command with it (a silent one would otherwise run
    // on with nothing in the API able to reach it).
    let (out, err, r) = tokio::select! {
        done = work => done,
        _ = tx.closed() => {
            let _ = l.sandbox.client.kill(&id, &exec_id, libc::SIGKILL as u32, false).await;
            return;
        }
    };
    if let Err(message) = out.and(err) {
        let _ = tx
            .send(Ok(line(&CommandEvent::Error {
                message: format!("output stream: {message}"),
            })))
            .await;
    }
    let last = match r {
        Ok(r) => CommandEvent::Exit {
            code: r.exit_status as i32,
        },
        Err(e) => CommandEvent::Error {
            message: e.to_string(),
        },
    };
    let _ = tx.send(Ok(line(&last))).await;
}

fn event(kind: StreamKind, data: String) -> CommandEvent {
    if kind == StreamKind::Stderr {
        CommandEvent::Stderr { data }
    } else {
        CommandEvent::Stdout { data }
    }
}

/// The longest prefix of `b` that does not end inside a UTF-8 character.
fn utf8_prefix(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes (not a cut character): pass everything, lossily.
        Err(_) => b.len(),
    }
}

#[utoipa::path(get, tag = "box", path = "/v1/sandboxes/{id}/commands", params(("id" = String, Path)),
    responses((status = 200, body = [CommandInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_commands(
    AxState(state): S,
    Path(id): Path<String>,
) -> Result<Json<Vec<CommandInfo>>, ApiError> {
    let l = live(&state, &id)?;
    let cmds = l.commands.lock().unwrap().values().cloned().collect();
    Ok(Json(cmds))
}

#[utoipa::path(post, tag = "box", path = "/v1/sandboxes/{id}/commands/{cmd}/kill",
    params(("id" = String, Path), ("cmd" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn kill_command(
    AxState(state): S,
    Path((id, cmd)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let l = live(&state, &id)?;
    if l.commands.lock().unwrap().remove(&cmd).is_none() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no command {cmd} in {id}"),
        ));
    }
    // A command that already exited is killed successfully.
    let _ = l
        .sandbox
        .client
        .kill(l.sandbox.container_id(), &cmd, libc::SIGKILL as u32, false)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, tag = "box", path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(AxState(state): S) -> impl IntoResponse {
    let pools: Vec<_> = state
        .pools
        .values()
        .map(|p| {
            (
                p.config.image.clone(),
                p.ready(),
                p.config.min_warm,
                p.boot_failures.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect();
    let live = state.live.lock().unwrap().len();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&pools, live),
    )
}

pub async fn openapi() -> impl IntoResponse {
    use utoipa::OpenApi;
    Json(api::ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_character_waits_for_its_rest() {
        let s = "aé".as_bytes();
        assert_eq!(utf8_prefix(&s[..2]), 1);
        assert_eq!(utf8_prefix(s), 3);
        assert_eq!(utf8_prefix(b"\xffa"), 2);
    }
}
