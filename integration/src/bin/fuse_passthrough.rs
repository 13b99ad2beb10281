//! Test tool: mounts `fuse-fs`'s plain passthrough filesystem (no hooks)
//! of `DATA` at `MNT` until SIGTERM or SIGINT, then unmounts.
//!
//! `fuse_passthrough DATA MNT [--threads N] [--no-kernel-passthrough]`
//!
//! Prints `mounted DATA on MNT` once the mount answers, so scripts can wait
//! for that line (`integration/scripts/sqlite-suite.sh compare-passthrough`
//! does). On a signal it unmounts, retrying for up to 10 s while files are
//! still open under the mountpoint, then detaches it lazily.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fuse_fs::{MountConfig, MountError, NoHooks, PassthroughOptions};
use tokio::signal::unix::{signal, SignalKind};

struct Args {
    data: PathBuf,
    mnt: PathBuf,
    threads: usize,
    kernel_passthrough: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut threads = MountConfig::default().threads;
    let mut kernel_passthrough = true;
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--threads") => {
                let n = it.next().context("--threads needs a number")?;
                threads = n
                    .to_string_lossy()
                    .parse()
                    .context("--threads needs a number")?;
            }
            Some("--no-kernel-passthrough") => kernel_passthrough = false,
            Some(s) if s.starts_with("--") => bail!("unknown option {s}"),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [data, mnt] = <[PathBuf; 2]>::try_from(positional).map_err(|_| {
        anyhow::anyhow!("usage: fuse_passthrough DATA MNT [--threads N] [--no-kernel-passthrough]")
    })?;
    Ok(Args {
        data,
        mnt,
        threads,
        kernel_passthrough,
    })
}

fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut opts = PassthroughOptions::default();
    opts.kernel_passthrough = a.kernel_passthrough;
    let mut cfg = MountConfig::default();
    cfg.threads = a.threads;
    let (mut mounted, handle) = fuse_fs::mount_passthrough(&a.data, &a.mnt, opts, &cfg, NoHooks)?;
    let status = handle.passthrough_status();
    println!(
        "mounted {} on {} (kernel passthrough: {})",
        a.data.display(),
        mounted.mountpoint().display(),
        if status.active {
            "on".to_string()
        } else {
            format!("off, {}", status.reason.unwrap_or_default())
        }
    );
    wait_for_signal()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match mounted.unmount() {
            Ok(()) => return Ok(()),
            Err(MountError::UnmountBusy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Dropping `mounted` detaches it lazily.
            Err(e) => return Err(e.into()),
        }
    }
}
