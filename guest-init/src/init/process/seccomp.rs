//! The spec's `linux.seccomp` compiled to a BPF program before the fork (the child only
//! installs it, right before its exec, after `no_new_privs`).
//!
//! The subset Box's host writes is supported: a default action of allow, errno or kill, and
//! rules naming syscalls with an errno, kill or allow action, optionally on one argument
//! compared equal or under a mask. Syscall names this kernel's table lacks are skipped, as
//! runc skips them; anything else unsupported is an error, never silently dropped.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The syscalls a container profile may name (x86_64), by name.
const SYSCALLS: &[(&str, i64)] = &[
    ("acct", libc::SYS_acct),
    ("add_key", libc::SYS_add_key),
    ("bpf", libc::SYS_bpf),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("clock_settime", libc::SYS_clock_settime),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("delete_module", libc::SYS_delete_module),
    ("finit_module", libc::SYS_finit_module),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fsopen", libc::SYS_fsopen),
    ("fspick", libc::SYS_fspick),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("init_module", libc::SYS_init_module),
    ("ioperm", libc::SYS_ioperm),
    ("iopl", libc::SYS_iopl),
    ("kcmp", libc::SYS_kcmp),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("kexec_load", libc::SYS_kexec_load),
    ("keyctl", libc::SYS_keyctl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("mbind", libc::SYS_mbind),
    ("mount", libc::SYS_mount),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("move_mount", libc::SYS_move_mount),
    ("move_pages", libc::SYS_move_pages),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("open_tree", libc::SYS_open_tree),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("pivot_root", libc::SYS_pivot_root),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("ptrace", libc::SYS_ptrace),
    ("quotactl", libc::SYS_quotactl),
    ("reboot", libc::SYS_reboot),
    ("request_key", libc::SYS_request_key),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("setns", libc::SYS_setns),
    ("settimeofday", libc::SYS_settimeofday),
    ("swapoff", libc::SYS_swapoff),
    ("swapon", libc::SYS_swapon),
    ("sysfs", libc::SYS_sysfs),
    ("_sysctl", libc::SYS__sysctl),
    ("umount2", libc::SYS_umount2),
    ("unshare", libc::SYS_unshare),
    ("uselib", libc::SYS_uselib),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("ustat", libc::SYS_ustat),
];

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        other => return Err(format!("seccomp action {other:?} is not supported")),
    })
}

/// The filters (none for a spec without seccomp).
pub fn compile(spec: Option<&LinuxSeccomp>) -> Result<Vec<BpfProgram>, String> {
    let Some(spec) = spec else {
        return Ok(Vec::new());
    };
    let default = action(spec.default_action(), spec.default_errno_ret())?;
    // seccompiler has one match action per filter: group the rules by action, one filter
    // each, all installed (the kernel applies the strictest answer).
    let mut by_action: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    for s in spec.syscalls().iter().flatten() {
        let act = action(s.action(), s.errno_ret())?;
        let mut conditions = Vec::new();
        for a in s.args().iter().flatten() {
            let op = match a.op() {
                LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
                LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(a.value()),
                other => return Err(format!("seccomp operator {other:?} is not supported")),
            };
            let value = match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                _ => a.value(),
            };
            let index = u8::try_from(a.index()).map_err(|_| "argument index".to_string())?;
            conditions.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| e.to_string())?,
            );
        }
        let slot = match by_action.iter_mut().find(|(a, _)| *a == act) {
            Some((_, m)) => m,
            None => {
                by_action.push((act.clone(), BTreeMap::new()));
                &mut by_action.last_mut().expect("just pushed").1
            }
        };
        for name in s.names() {
            let Some((_, nr)) = SYSCALLS.iter().find(|(n, _)| n == name) else {
                tracing::debug!("seccomp: no syscall {name} here, skipped");
                continue;
            };
            let rules = slot.entry(*nr).or_default();
            if !conditions.is_empty() {
                rules.push(SeccompRule::new(conditions.clone()).map_err(|e| e.to_string())?);
            }
        }
    }
    // One program per action (seccompiler's filters have one match action); the kernel runs
    // them all and the strictest answer wins. The groups name disjoint syscalls.
    let mut programs = Vec::new();
    for (act, rules) in by_action {
        if rules.is_empty() {
            continue;
        }
        let filter = SeccompFilter::new(rules, default.clone(), act, TargetArch::x86_64)
            .map_err(|e| e.to_string())?;
        programs.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denylist_profile_compiles_and_bad_ones_are_errors() {
        let spec: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mount", "unshare", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": 268435456, "valueTwo": 268435456, "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }))
        .unwrap();
        assert_eq!(compile(Some(&spec)).unwrap().len(), 1);
        assert!(compile(None).unwrap().is_empty());
        let two: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }))
        .unwrap();
        assert_eq!(compile(Some(&two)).unwrap().len(), 2);
        let bad: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_TRACE"}]
        }))
        .unwrap();
        assert!(compile(Some(&bad)).is_err());
    }
}
