//! The ttrpc edge of containerd's Task service: convert the request, call [`Tasks`], convert
//! the answer. No logic lives here.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::api::{
    CloseIORequest, CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use ttrpc::r#async::TtrpcContext;

use super::container::{CreateRequest, ProcessRequest, Tasks};
use super::process::Phase;
use super::TaskError;
use crate::api::PROCESS_SPEC_TYPE_URL;
use crate::init::events::timestamp;

pub struct TaskService(pub Arc<Tasks>);

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let pr = ProcessRequest {
            container_id: req.id.clone(),
            exec_id: String::new(),
            terminal: req.terminal,
            io_names: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
        };
        let extra = CreateRequest {
            spec: req.options.clone().into_option(),
            rootfs: req.rootfs.clone(),
        };
        let pid = self.0.create(pr, Path::new(&req.bundle), extra).await?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let pid = self.0.start(&req.id, &req.exec_id).await?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| TaskError::InvalidArgument("exec without a process spec".into()))?;
        if !any.type_url.is_empty() && !any.type_url.ends_with(PROCESS_SPEC_TYPE_URL) {
            return Err(TaskError::InvalidArgument(format!(
                "unexpected spec type {:?}",
                any.type_url
            ))
            .into());
        }
        let spec = serde_json::from_slice(&any.value)
            .map_err(|e| TaskError::InvalidArgument(format!("process spec: {e}")))?;
        let pr = ProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            terminal: req.terminal,
            io_names: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()],
        };
        self.0.exec(pr, spec).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.0.kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let exit = self.0.wait(&req.id, &req.exec_id).await?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.exited_at)).into(),
            ..Default::default()
        })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let c = self.0.container(&req.id)?;
        let p = self.0.process(&req.id, &req.exec_id)?;
        let mut resp = StateResponse {
            id: if req.exec_id.is_empty() {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid().map_or(0, |p| p.as_raw() as u32),
            stdin: p.io_names[0].clone(),
            stdout: p.io_names[1].clone(),
            stderr: p.io_names[2].clone(),
            terminal: p.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        let status = match &*p.phase() {
            Phase::Defined(_) | Phase::Created(_) => Status::CREATED,
            Phase::Running(_) => Status::RUNNING,
            Phase::Exited(exit) => {
                resp.exit_status = exit.status;
                resp.exited_at = Some(timestamp(exit.exited_at)).into();
                Status::STOPPED
            }
        };
        resp.status = status.into();
        Ok(resp)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let (exit, pid) = self.0.delete(&req.id, &req.exec_id).await?;
        let mut resp = DeleteResponse {
            pid,
            ..Default::default()
        };
        if let Some(exit) = exit {
            resp.exit_status = exit.status;
            resp.exited_at = Some(timestamp(exit.exited_at)).into();
        }
        Ok(resp)
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.0
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            self.0.close_io(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let processes = self
            .0
            .pids(&req.id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid.as_raw() as u32,
                ..Default::default()
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }
}
