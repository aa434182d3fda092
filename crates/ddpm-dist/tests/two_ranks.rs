//! Jobs of two ranks on 127.0.0.1, each rank a process: collectives, the store, and the ways a job
//! fails (a peer that dies, stalls or never comes).
//!
//! Every test is both launcher and rank. Run by the test harness, it starts this test binary again
//! as the job's processes (`--exact <test>`, with torchrun's variables, a free port, one thread
//! each, and `DDPM_DIST_TEST_RANK_OF=<test>`), waits for them under a deadline and checks how each
//! ended. Run as a rank (that variable set), it joins the group, does the rank's part — panicking,
//! hence exiting non-zero, when a check fails — and prints a marker that the launcher requires, so
//! a rank that ran no test cannot pass.
use std::io::{Read, Seek};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ddpm_dist::{Backend, DistEnv, DistError, Op, ProcessGroup};
use tch::{Device, Kind, Tensor};

/// Names the test a rank process is a rank of.
const RANK_OF: &str = "DDPM_DIST_TEST_RANK_OF";
/// The group timeout the launcher chose, in milliseconds.
const TIMEOUT_MS: &str = "DDPM_DIST_TEST_TIMEOUT_MS";
/// Group timeout of the jobs that should succeed: ample on a loaded 2-core machine.
const OK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the launcher lets a job run before killing it and failing.
const DEADLINE: Duration = Duration::from_secs(90);

/// The name of the enclosing test function.
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").expect("a function path");
        path.rsplit("::").next().expect("a test name")
    }};
}

// ---------------------------------------------------------------------------------------------
// Rank side

/// In a rank process of `test`: runs this rank's part (`body` gets the job's environment, as the
/// crate parses it, and the group timeout), then prints the marker. Returns whether this process
/// was a rank (the launching process gets `false` and launches).
fn as_rank(test: &str, body: impl FnOnce(DistEnv, Duration)) -> bool {
    let Ok(of) = std::env::var(RANK_OF) else {
        return false;
    };
    assert_eq!(of, test, "a rank process ran the wrong test");
    tch::set_num_threads(1);
    let env = DistEnv::from_env()
        .expect("torchrun's variables")
        .expect("WORLD_SIZE is set");
    let ms: u64 = std::env::var(TIMEOUT_MS)
        .expect("the launcher sets the timeout")
        .parse()
        .expect("a timeout in ms");
    let rank = env.rank;
    body(env, Duration::from_millis(ms));
    println!("{}", done_marker(test, rank));
    true
}

fn done_marker(test: &str, rank: usize) -> String {
    format!("ddpm-dist test {test}: rank {rank} done")
}

fn join(env: &DistEnv, timeout: Duration) -> ProcessGroup {
    ProcessGroup::init(env, Backend::Gloo, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Integer-valued test data of rank `rank`: exact in f32 and f64, so sums and halves are exact.
fn integer_values(rank: usize, n: i64, kind: Kind) -> Tensor {
    let r = rank as f64;
    (Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(4099) * (r + 1.0) - 1000.0 * r)
        .to_kind(kind)
}

fn bits32(t: &Tensor) -> Vec<u32> {
    Vec::<f32>::try_from(t)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn bits64(t: &Tensor) -> Vec<u64> {
    Vec::<f64>::try_from(t)
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// SIGPIPE back to its default action, as `ddpm-cli` sets it (Rust's runtime ignores it): the
/// failure tests then also check that a write to a dead peer cannot kill the survivor.
fn default_sigpipe() {
    // SAFETY: resetting one signal's disposition; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

// ---------------------------------------------------------------------------------------------
// Launcher side

/// A rank process (or torchrun) and the file that receives its stdout and stderr.
struct Proc {
    label: String,
    child: Child,
    log: std::fs::File,
}

/// How a process ended and what it printed.
struct Ended {
    label: String,
    status: ExitStatus,
    output: String,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "--- {} ({}):", self.label, self.status)?;
        f.write_str(&self.output)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// This test binary, set up to run `test` as a rank with group timeout `timeout`.
fn this_binary(test: &str, timeout: Duration) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(RANK_OF, test)
        .env(TIMEOUT_MS, timeout.as_millis().to_string())
        .env("OMP_NUM_THREADS", "1")
        .env_remove("GLOO_SOCKET_IFNAME")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
        .env_remove("TORCHELASTIC_RESTART_COUNT");
    cmd
}

fn spawn(label: String, mut cmd: Command) -> Proc {
    let log = tempfile::tempfile().expect("a temporary log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log.try_clone().unwrap());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
    Proc { label, child, log }
}

/// Starts `ranks` of a job of `world` ranks whose store is at 127.0.0.1:`port`, all on this
/// machine.
fn start_ranks(
    test: &str,
    ranks: &[usize],
    world: usize,
    port: u16,
    timeout: Duration,
) -> Vec<Proc> {
    ranks
        .iter()
        .map(|&rank| {
            let mut cmd = this_binary(test, timeout);
            cmd.env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string());
            spawn(format!("rank {rank} of {world} (port {port})"), cmd)
        })
        .collect()
}

/// Waits for every process; past `deadline` kills them all and fails with their output.
fn wait_all(mut procs: Vec<Proc>, deadline: Duration) -> Vec<Ended> {
    let start = Instant::now();
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; procs.len()];
    while statuses.iter().any(Option::is_none) {
        for (p, s) in procs.iter_mut().zip(&mut statuses) {
            if s.is_none() {
                *s = p.child.try_wait().expect("waiting for a rank");
            }
        }
        if start.elapsed() > deadline && statuses.iter().any(Option::is_none) {
            for (p, s) in procs.iter_mut().zip(&mut statuses) {
                if s.is_none() {
                    let _ = p.child.kill();
                    *s = Some(p.child.wait().expect("reaping a killed rank"));
                }
            }
            let ended = collect(procs, statuses);
            panic!(
                "the job ran past its deadline of {deadline:?} and was killed:\n{}",
                ended.iter().map(Ended::to_string).collect::<String>()
            );
        }
        sleep(Duration::from_millis(20));
    }
    collect(procs, statuses)
}

fn collect(procs: Vec<Proc>, statuses: Vec<Option<ExitStatus>>) -> Vec<Ended> {
    procs
        .into_iter()
        .zip(statuses)
        .map(|(mut p, status)| {
            let mut output = String::new();
            p.log.rewind().unwrap();
            p.log.read_to_string(&mut output).unwrap();
            // Shown with --nocapture (and kept by the harness for a failing test).
            println!("--- {}:\n{output}", p.label);
            Ended {
                label: p.label,
                status: status.expect("every process ended"),
                output,
            }
        })
        .collect()
}

/// Fails unless `ended` exited 0 after printing the done marker of `rank`.
fn assert_done(test: &str, rank: usize, ended: &Ended, all: &[Ended]) {
    assert!(
        ended.status.success() && ended.output.contains(&done_marker(test, rank)),
        "{} did not finish its part:\n{}",
        ended.label,
        all.iter().map(Ended::to_string).collect::<String>()
    );
}

/// Runs a job of two ranks and fails unless both finish their part.
fn run_two_ranks(test: &str, timeout: Duration) {
    let ended = wait_all(
        start_ranks(test, &[0, 1], 2, free_port(), timeout),
        DEADLINE,
    );
    for (rank, e) in ended.iter().enumerate() {
        assert_done(test, rank, e, &ended);
    }
}

// ---------------------------------------------------------------------------------------------
// Collectives and the store

#[test]
fn all_reduce_sum_and_mean_are_exact_on_integer_valued_floats() {
    let test = test_name!();
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        assert_eq!(
            (g.rank(), g.world_size(), g.device()),
            (env.rank, 2, Device::Cpu)
        );
        // Odd length: Gloo's ring splits it into unequal chunks.
        let n = 1_000_003;
        for kind in [Kind::Float, Kind::Double] {
            let expected_sum = integer_values(0, n, kind) + integer_values(1, n, kind);
            let mut t = integer_values(g.rank(), n, kind);
            g.all_reduce_sum(&mut t).unwrap();
            assert!(t.equal(&expected_sum), "{kind:?} sum differs");
            let mut t = integer_values(g.rank(), n, kind);
            g.all_reduce_mean(&mut t).unwrap();
            assert!(t.equal(&(expected_sum / 2.0)), "{kind:?} mean differs");
            assert_eq!(t.kind(), kind);
        }
        // A 2-D tensor that requires grad (a parameter): the mean divides it in place all the same.
        let mut p = integer_values(g.rank(), 12, Kind::Float)
            .view([3, 4])
            .set_requires_grad(true);
        g.all_reduce_mean(&mut p).unwrap();
        let want = (integer_values(0, 12, Kind::Float) + integer_values(1, 12, Kind::Float)) / 2.0;
        assert!(p.detach().equal(&want.view([3, 4])));
        // Integer tensors sum exactly; their mean is refused before communicating.
        let mut ints = Tensor::from_slice(&[g.rank() as i64 + 5, -7]);
        g.all_reduce_sum(&mut ints).unwrap();
        assert_eq!(Vec::<i64>::try_from(&ints).unwrap(), vec![11, -14]);
        let e = g.all_reduce_mean(&mut ints).unwrap_err();
        assert!(
            matches!(
                e,
                DistError::InvalidArgument {
                    op: Op::AllReduceMean,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("floating-point"), "{e}");
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

#[test]
fn a_bad_tensor_is_an_error_not_undefined_behaviour() {
    let test = test_name!();
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        let base = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let mut transposed = base.transpose(0, 1);
        let e = g.all_reduce_sum(&mut transposed).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                DistError::InvalidArgument {
                    op: Op::AllReduceSum,
                    ..
                }
            ) && text.starts_with(&format!("rank {}: all_reduce_sum: ", g.rank()))
                && text.contains("not contiguous"),
            "{text}"
        );
        let mut undefined = Tensor::new();
        let e = g.broadcast(&mut undefined, 0).unwrap_err();
        assert!(e.to_string().contains("undefined"), "{e}");
        let mut strided = Tensor::zeros([10], (Kind::Float, Device::Cpu)).slice(0, 0, 10, 2);
        assert!(g.all_reduce_sum_async(&mut strided).is_err());
        let mut t = base.copy();
        let e = g.broadcast(&mut t, 2).unwrap_err();
        assert!(
            matches!(
                e,
                DistError::InvalidArgument {
                    op: Op::Broadcast { root: 2 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("root 2 is not a rank of a group of 2"),
            "{e}"
        );
        let e = g.store_set("a\0b", b"x").unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        // None of these reached the peer: the group still works.
        let mut ok = Tensor::ones([4], (Kind::Float, Device::Cpu));
        g.all_reduce_sum(&mut ok).unwrap();
        assert_eq!(Vec::<f32>::try_from(&ok).unwrap(), vec![2.0; 4]);
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

#[test]
fn broadcast_from_rank_1_is_bit_equal() {
    let test = test_name!();
    /// Rank 1's values: random normals with NaN payloads, −0, a subnormal and infinities.
    fn rank1_f32() -> Vec<f32> {
        tch::manual_seed(17);
        let mut v =
            Vec::<f32>::try_from(Tensor::randn([4097], (Kind::Float, Device::Cpu))).unwrap();
        v[..6].copy_from_slice(&[
            f32::from_bits(0x7fc0_1234),
            f32::from_bits(0xffa0_0001),
            -0.0,
            f32::MIN_POSITIVE / 8.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        v
    }
    fn rank1_f64() -> Vec<f64> {
        vec![
            f64::from_bits(0x7ff8_dead_beef_0001),
            -0.0,
            5e-324,
            std::f64::consts::PI,
        ]
    }
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        let mut t = if g.rank() == 1 {
            Tensor::from_slice(rank1_f32().as_slice())
        } else {
            Tensor::zeros([4097], (Kind::Float, Device::Cpu))
        };
        g.broadcast(&mut t, 1).unwrap();
        let want: Vec<u32> = rank1_f32().iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits32(&t), want, "f32 bits differ on rank {}", g.rank());
        let mut d = if g.rank() == 1 {
            Tensor::from_slice(rank1_f64().as_slice())
        } else {
            Tensor::full([4], 7.0, (Kind::Double, Device::Cpu))
        };
        g.broadcast(&mut d, 1).unwrap();
        let want: Vec<u64> = rank1_f64().iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits64(&d), want, "f64 bits differ on rank {}", g.rank());
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

#[test]
fn barrier_waits_for_the_last_rank() {
    let test = test_name!();
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        g.barrier().unwrap();
        let late = Duration::from_millis(600);
        if g.rank() == 1 {
            sleep(late);
        }
        let start = Instant::now();
        g.barrier().unwrap();
        let waited = start.elapsed();
        if g.rank() == 0 {
            assert!(
                waited >= late / 2,
                "rank 0 left the barrier after {waited:?}, before rank 1 ({late:?} late) entered it"
            );
        }
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

#[test]
fn store_values_cross_ranks() {
    let test = test_name!();
    let value = |rank: usize| -> Vec<u8> { vec![rank as u8, 0, 255, b'k', 0xc3] };
    let big: Vec<u8> = (0..(1 << 20) + 7)
        .map(|i: u32| (i * 31 % 251) as u8)
        .collect();
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        let (me, peer) = (g.rank(), 1 - g.rank());
        g.store_set(&format!("from-{me}"), &value(me)).unwrap();
        // Blocks until the peer has set its key.
        assert_eq!(g.store_get(&format!("from-{peer}")).unwrap(), value(peer));
        if me == 0 {
            g.store_set("big", &big).unwrap();
            g.store_set("empty", &[]).unwrap();
            g.store_set("again", b"first").unwrap();
        }
        assert_eq!(g.store_get("big").unwrap(), big);
        assert_eq!(g.store_get("empty").unwrap(), Vec::<u8>::new());
        assert_eq!(g.store_get("again").unwrap(), b"first");
        g.barrier().unwrap();
        if me == 0 {
            g.store_set("again", b"second").unwrap();
        }
        g.barrier().unwrap();
        assert_eq!(g.store_get("again").unwrap(), b"second");
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

#[test]
fn async_all_reduces_of_slices_then_wait() {
    let test = test_name!();
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        let n = 2_000_003;
        let want = integer_values(0, n, Kind::Float) + integer_values(1, n, Kind::Float);
        // A packed buffer summed in four slices in flight at once, as gradient buckets are.
        let buf = integer_values(g.rank(), n, Kind::Float);
        let bounds = [0, 1, 700_000, 1_500_000, n];
        let mut slices: Vec<Tensor> = bounds
            .windows(2)
            .map(|w| buf.narrow(0, w[0], w[1] - w[0]))
            .collect();
        let works: Vec<_> = slices
            .iter_mut()
            .map(|s| g.all_reduce_sum_async(s).unwrap())
            .collect();
        for w in works {
            w.wait().unwrap();
        }
        assert!(buf.equal(&want), "the slices' sums differ");
        // A work dropped without `wait` waits in its drop: the sum is there afterwards.
        let mut t = integer_values(g.rank(), 1000, Kind::Double);
        drop(g.all_reduce_sum_async(&mut t).unwrap());
        let want = integer_values(0, 1000, Kind::Double) + integer_values(1, 1000, Kind::Double);
        assert!(t.equal(&want), "a dropped work had not finished");
    }) {
        return;
    }
    run_two_ranks(test, OK_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// Failures: errors within the timeout, never a hang, never a dead survivor

#[test]
fn a_peer_that_dies_mid_collective_is_an_error_naming_the_op() {
    let test = test_name!();
    // Long, so that an error well within it can only come from the closed connection.
    let timeout = Duration::from_secs(20);
    if as_rank(test, |env, timeout| {
        default_sigpipe();
        let g = join(&env, timeout);
        // 128 MB: the all-reduce takes far longer than the 10 ms rank 1 lives in it, so rank 0 is
        // still sending and receiving when the connection breaks.
        let mut t = Tensor::full(
            [32 << 20],
            g.rank() as f64 + 1.0,
            (Kind::Float, Device::Cpu),
        );
        g.barrier().unwrap();
        if g.rank() == 1 {
            let _work = g.all_reduce_sum_async(&mut t).unwrap();
            sleep(Duration::from_millis(10));
            // SAFETY: sending a signal to this process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL ends the process");
        }
        let start = Instant::now();
        let e = g.all_reduce_sum(&mut t).unwrap_err();
        let took = start.elapsed();
        let text = e.to_string();
        println!("rank 0 got, after {took:?}: {text}");
        assert!(
            matches!(&e, DistError::Collective { rank: 0, world_size: 2, op: Op::AllReduceSum, message, .. } if !message.is_empty()),
            "{text}"
        );
        assert!(
            text.starts_with("rank 0 of 2: all_reduce_sum failed (timeout 20s): "),
            "{text}"
        );
        assert!(took < timeout / 2, "the error took {took:?}");
    }) {
        return;
    }
    let ended = wait_all(
        start_ranks(test, &[0, 1], 2, free_port(), timeout),
        DEADLINE,
    );
    assert_done(test, 0, &ended[0], &ended);
    assert_eq!(
        ended[1].status.signal(),
        Some(libc::SIGKILL),
        "rank 1 should have been killed:\n{}",
        ended[1]
    );
}

#[test]
fn a_peer_that_stalls_past_the_timeout_is_a_timeout_error() {
    let test = test_name!();
    let timeout = Duration::from_secs(2);
    if as_rank(test, |env, timeout| {
        default_sigpipe();
        let g = join(&env, timeout);
        g.barrier().unwrap();
        if g.rank() == 1 {
            // Alive but absent: never joins rank 0's all-reduce.
            sleep(2 * timeout);
            return;
        }
        let mut t = Tensor::ones([1000], (Kind::Float, Device::Cpu));
        let start = Instant::now();
        let e = g.all_reduce_sum(&mut t).unwrap_err();
        let took = start.elapsed();
        let text = e.to_string();
        println!("rank 0 got, after {took:?}: {text}");
        assert!(
            matches!(
                e,
                DistError::Collective {
                    op: Op::AllReduceSum,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.starts_with("rank 0 of 2: all_reduce_sum failed (timeout 2s): "),
            "{text}"
        );
        assert!(
            took >= timeout.mul_f64(0.9) && took < timeout * 10,
            "the timeout error came after {took:?}"
        );
    }) {
        return;
    }
    run_two_ranks(test, timeout);
}

#[test]
fn a_key_nobody_sets_is_a_store_error_after_the_timeout() {
    let test = test_name!();
    let timeout = Duration::from_secs(2);
    if as_rank(test, |env, timeout| {
        let g = join(&env, timeout);
        let start = Instant::now();
        let e = g.store_get("never-set").unwrap_err();
        let took = start.elapsed();
        let text = e.to_string();
        println!("rank {} got, after {took:?}: {text}", g.rank());
        assert!(
            matches!(&e, DistError::Store { op: Op::StoreGet, key, .. } if key == "never-set"),
            "{text}"
        );
        assert!(
            text.starts_with(&format!(
                "rank {}: store_get of key \"never-set\" failed (timeout 2s): ",
                g.rank()
            )),
            "{text}"
        );
        assert!(
            took >= timeout.mul_f64(0.9) && took < timeout * 10,
            "the store error came after {took:?}"
        );
    }) {
        return;
    }
    run_two_ranks(test, timeout);
}

#[test]
fn a_peer_that_never_joins_is_an_init_error_naming_the_timeout() {
    let test = test_name!();
    let timeout = Duration::from_secs(2);
    if as_rank(test, |env, timeout| {
        default_sigpipe();
        let start = Instant::now();
        let e = ProcessGroup::init(&env, Backend::Gloo, timeout).unwrap_err();
        let took = start.elapsed();
        let text = e.to_string();
        println!("rank {} alone got, after {took:?}: {text}", env.rank);
        assert!(
            matches!(e, DistError::Init { timeout: t, .. } if t == timeout),
            "{text}"
        );
        let store = format!("127.0.0.1:{}", env.master_port);
        assert!(
            text.starts_with(&format!(
                "rank {} of 2: joining the gloo group through the store at {store} (hosted by rank 0) \
                 failed within the timeout of 2s: ",
                env.rank
            )),
            "{text}"
        );
        // Not a speed check: it waited for the timeout, and it did end (c10d's client retries
        // its connection with a randomised back-off, so the end may come a few seconds late).
        assert!(
            took >= timeout.mul_f64(0.9) && took < timeout * 10,
            "the init error came after {took:?}"
        );
    }) {
        return;
    }
    // Rank 0 hosts a store that rank 1 never reaches; rank 1 looks for a store nobody hosts.
    let mut procs = start_ranks(test, &[0], 2, free_port(), timeout);
    procs.extend(start_ranks(test, &[1], 2, free_port(), timeout));
    let ended = wait_all(procs, DEADLINE);
    for (rank, e) in ended.iter().enumerate() {
        assert_done(test, rank, e, &ended);
    }
}

// ---------------------------------------------------------------------------------------------
// torchrun

/// torchrun of the project's virtual environment (`cargo xtask` puts it first on PATH and sets
/// VIRTUAL_ENV).
fn torchrun() -> PathBuf {
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/torchrun"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("torchrun"))
            .find(|p| p.is_file())
    });
    venv.filter(|p| p.is_file())
        .or(on_path)
        .expect("torchrun not found (VIRTUAL_ENV/bin, PATH): run the tests through `cargo xtask`, whose environment has the project's .venv with torch")
}

#[test]
fn torchrun_starts_the_ranks_and_its_agent_hosts_the_store() {
    let test = test_name!();
    if as_rank(test, |env, timeout| {
        assert!(
            env.agent_store,
            "torchrun sets TORCHELASTIC_USE_AGENT_STORE=True: {env:?}"
        );
        assert_eq!(
            (env.world_size, env.local_world_size, env.restart_count),
            (2, 2, 0)
        );
        assert!(!env.hosts_store());
        let g = join(&env, timeout);
        let mut t = Tensor::from_slice(&[g.rank() as f32 + 1.0]);
        g.all_reduce_sum(&mut t).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![3.0]);
        g.barrier().unwrap();
    }) {
        return;
    }
    let port = free_port();
    let cmd = this_binary(test, OK_TIMEOUT);
    let exe = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut torchrun_cmd = Command::new(torchrun());
    torchrun_cmd
        .args([
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
        ])
        .arg("--master-port")
        .arg(port.to_string())
        .arg("--no-python")
        .arg(exe)
        .args(args);
    // The rank variables come from torchrun; the rest of this_binary's environment is kept.
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => torchrun_cmd.env(k, v),
            None => torchrun_cmd.env_remove(k),
        };
    }
    let ended = wait_all(
        vec![spawn(format!("torchrun (port {port})"), torchrun_cmd)],
        DEADLINE,
    );
    let e = &ended[0];
    assert!(e.status.success(), "torchrun failed:\n{e}");
    for rank in 0..2 {
        assert!(
            e.output.contains(&done_marker(test, rank)),
            "rank {rank} did not finish:\n{e}"
        );
    }
}
