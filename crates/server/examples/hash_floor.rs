//! The password-hashing floor that `scripts/bench/login.sh` compares login throughput against: hashes
//! passwords through the server's own hashing path (`PasswordHasher::hash` with
//! `HashAlgorithm::default()`, on tokio's blocking pool) and prints what one hash costs.
//!
//! Usage: `hash_floor [N] [THREADS]` (default 30 and the number of cores). Prints one line of
//! `key=value` pairs:
//!
//! - `median_ms`, `cpu_ms`, `faults`: median wall time, CPU time and minor page faults of one hash,
//!   over N hashes one at a time, measured once the allocator reuses the hash's 19 MiB instead of
//!   taking fresh pages from the kernel (the warm-up below runs until a hash takes no page fault).
//!   This is the floor: the cost of the argon2id computation itself.
//! - `cold_ms`, `cold_cpu_ms`, `cold_faults`: the same over the warm-up hashes that did page-fault
//!   (glibc returns a freed 19 MiB block to the kernel until its mmap threshold adapts, and the kernel
//!   zeroes every page of the next one); `nan` when there were none.
//! - `par_threads`, `par_rate`, `par_cpu_ms`, `par_faults`: THREADS hashes at once (a pool of THREADS
//!   workers kept full, 15 per worker untimed, then N per worker): hashes per second and CPU time and
//!   faults per hash, i.e. the machine's measured floor with every core hashing.
//!
//! CPU time is the whole process's: the sum of every thread's on-CPU time from
//! `/proc/self/task/*/schedstat` (nanoseconds). A login verifies rather than hashes; argon2
//! verification recomputes the hash with the parameters stored in it, so both cost the same.

#![allow(clippy::print_stdout, reason = "the benchmark script reads this line")]

use std::time::Instant;

use portcullis_app::{HashAlgorithm, HashPoolSize, PasswordHasher};
use secrecy::SecretString;

/// Warm-up hashes at most, while looking for one that takes no page fault.
const MAX_WARMUP: usize = 40;

/// Untimed hashes per worker before the all-cores measurement.
const PARALLEL_WARMUP: usize = 15;

/// On-CPU nanoseconds of every thread of this process so far (first field of each task's schedstat).
fn process_cpu_ns() -> std::io::Result<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("schedstat");
        // A thread that exited between the listing and the read contributes nothing more.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> std::io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain,
    // starting with field 3 (state) at index 0.
    let rest = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or_default();
    Ok(rest.split_whitespace().nth(10 - 3).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Wall ms, CPU ms and minor faults of one hash.
async fn one_hash(hasher: &PasswordHasher, i: usize) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let password = SecretString::from(format!("correct horse battery staple {i}"));
    let (cpu_before, faults_before) = (process_cpu_ns()?, minor_faults()?);
    let started = Instant::now();
    hasher.hash(password).await?;
    let wall = started.elapsed().as_secs_f64() * 1e3;
    let cpu = (process_cpu_ns()? - cpu_before) as f64 / 1e6;
    let faults = (minor_faults()? - faults_before) as f64;
    Ok((wall, cpu, faults))
}

/// `threads` tasks hashing `per_thread` passwords each through `pool`.
async fn hash_in_parallel(
    pool: &PasswordHasher,
    threads: usize,
    per_thread: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..threads {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..per_thread {
                pool.hash(SecretString::from(format!("correct horse battery staple {t} {i}"))).await?;
            }
            Ok::<(), portcullis_app::AppError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 30,
    };
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let threads: usize = match std::env::args().nth(2) {
        Some(arg) => arg.parse()?,
        None => cores,
    };
    let verbose = std::env::var_os("HASH_FLOOR_VERBOSE").is_some();
    let algorithm = HashAlgorithm::default();

    // One at a time. `new` computes the dummy hash: one more hash of warm-up.
    let hasher = PasswordHasher::new(algorithm, HashPoolSize { workers: 1, queue: 1 })?;
    let (mut cold_wall, mut cold_cpu, mut cold_faults) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..MAX_WARMUP {
        let (wall, cpu, faults) = one_hash(&hasher, i).await?;
        if verbose {
            eprintln!("warm-up {i}: {wall:.3} ms wall, {cpu:.3} ms cpu, {faults} minor faults");
        }
        if faults == 0.0 {
            break;
        }
        cold_wall.push(wall);
        cold_cpu.push(cpu);
        cold_faults.push(faults);
    }
    let (mut wall_ms, mut cpu_ms, mut faults) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (wall, cpu, faulted) = one_hash(&hasher, i).await?;
        if verbose {
            eprintln!("hash {i}: {wall:.3} ms wall, {cpu:.3} ms cpu, {faulted} minor faults");
        }
        wall_ms.push(wall);
        cpu_ms.push(cpu);
        faults.push(faulted);
    }
    let min_ms = wall_ms.iter().copied().fold(f64::INFINITY, f64::min);

    // THREADS at once, on a pool of that many workers kept full: first untimed, until the
    // allocator of each blocking thread has settled as it has in a server that has been hashing for
    // a while, then measured.
    let pool = PasswordHasher::new(algorithm, HashPoolSize { workers: threads, queue: threads })?;
    hash_in_parallel(&pool, threads, PARALLEL_WARMUP).await?;
    let (cpu_before, faults_before) = (process_cpu_ns()?, minor_faults()?);
    let started = Instant::now();
    hash_in_parallel(&pool, threads, n).await?;
    let total = (threads * n).max(1) as f64;
    let par_rate = total / started.elapsed().as_secs_f64();
    let par_cpu_ms = (process_cpu_ns()? - cpu_before) as f64 / 1e6 / total;
    let par_faults = (minor_faults()? - faults_before) as f64 / total;

    let params = match algorithm {
        HashAlgorithm::Argon2id { memory_kib, iterations, parallelism } => {
            format!("algorithm=argon2id m={memory_kib} t={iterations} p={parallelism}")
        }
        HashAlgorithm::Bcrypt { cost } => format!("algorithm=bcrypt cost={cost}"),
    };
    println!(
        "hash_floor n={n} {params} median_ms={:.3} min_ms={min_ms:.3} cpu_ms={:.3} faults={:.0} \
         cold_n={} cold_ms={:.3} cold_cpu_ms={:.3} cold_faults={:.0} \
         par_threads={threads} par_rate={par_rate:.2} par_cpu_ms={par_cpu_ms:.3} par_faults={par_faults:.0}",
        median(&wall_ms),
        median(&cpu_ms),
        median(&faults),
        cold_wall.len(),
        median(&cold_wall),
        median(&cold_cpu),
        median(&cold_faults),
    );
    Ok(())
}
