//! Ctrl-C and SIGTERM, handled from the first instant of `main`.
//!
//! The handlers are registered before the command line is parsed or a file is read, so a
//! signal at any moment after that reaches them: a command that can stop cleanly (`run`,
//! `curate`, `eval`) is cancelled (it stops after the current super-batch, deletes its
//! unfinished files and writes its report with `status: cancelled`), and every other command
//! exits at once with 130.
//!
//! Before `main`: libtorch's static constructors (registering its operators) take about a
//! second of every start, and a signal then would get the kernel's default action (exit
//! 143, no report). So the binary also puts a function in `.preinit_array`, which the dynamic
//! linker runs before any shared library's constructors: it installs a handler that only
//! records the signal, and `main` acts on a recorded signal once the real handlers are in
//! place. The one window left is the dynamic linker's relocation of the libraries before
//! that (about 20 ms, `LD_DEBUG=statistics`), and `exec` itself.
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

use saln::pipeline::Cancel;

/// The runtime the handlers run on, and what a signal sets.
pub struct Signals {
    /// The async runtime (one worker thread) of the handlers and of the pipeline's driver.
    pub rt: tokio::runtime::Runtime,
    cancel: Cancel,
    /// Whether the command stops on `cancel` by itself; until a command says otherwise it is
    /// assumed to, so that no signal is lost while the command line is being read.
    graceful: Arc<AtomicBool>,
}

impl Signals {
    /// Starts the runtime and registers the SIGINT and SIGTERM handlers (synchronously: they
    /// are in place when this returns).
    pub fn install() -> Result<Signals, ExitCode> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::from(1)
            })?;
        let cancel = Cancel::default();
        let graceful = Arc::new(AtomicBool::new(true));
        let _in_runtime = rt.enter();
        let stopped = registered().map_err(|e| {
            eprintln!("error: cannot install the signal handlers: {e}");
            ExitCode::from(1)
        })?;
        {
            let (cancel, graceful) = (cancel.clone(), graceful.clone());
            rt.spawn(async move {
                stopped.await;
                cancel.cancel();
                if graceful.load(Ordering::SeqCst) {
                    eprintln!("saln: stopping after the current super-batch (signal received)");
                } else {
                    std::process::exit(130);
                }
            });
        }
        drop(_in_runtime);
        // A signal that came before the handlers above replaced the early one.
        if EARLY.load(Ordering::SeqCst) != 0 {
            cancel.cancel();
            eprintln!("saln: stopping (signal received during start-up)");
        }
        Ok(Signals {
            rt,
            cancel,
            graceful,
        })
    }

    /// The cancel flag of a command that stops cleanly on a signal.
    pub fn graceful(&self) -> Cancel {
        self.cancel.clone()
    }

    /// For a command that does not watch the cancel flag: a signal from now on exits with
    /// 130 at once, and so does one that came already.
    pub fn abrupt(&self) {
        self.graceful.store(false, Ordering::SeqCst);
        if self.cancel.is_cancelled() {
            std::process::exit(130);
        }
    }
}

/// A future that completes at the first SIGINT or SIGTERM, with both handlers registered
/// before it is returned.
#[cfg(unix)]
fn registered() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn registered() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The first SIGINT or SIGTERM that came before [`Signals::install`] (0: none).
static EARLY: AtomicI32 = AtomicI32::new(0);

/// The early handler: records the signal (an atomic store is async-signal-safe).
#[cfg(target_os = "linux")]
extern "C" fn record_early(sig: libc::c_int) {
    let _ = EARLY.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Installs [`record_early`] for SIGINT and SIGTERM; run from `.preinit_array`.
#[cfg(target_os = "linux")]
extern "C" fn install_early() {
    // SAFETY: `sigaction` with a zeroed, then filled, struct and a handler that only does an
    // atomic store; nothing else runs yet (no threads exist before the constructors).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = record_early as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

/// Runs [`install_early`] before the constructors of libtorch (and of every other library).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".preinit_array"]
static INSTALL_EARLY: extern "C" fn() = install_early;
