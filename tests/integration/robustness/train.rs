//! Training survives interruptions, a second process, divergence and a full disk: each test
//! drives the real `cae train` on 640 real CIFAR-10 training and 200 validation images.

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{
    CHECKPOINT_FILE, assert_clean_failure, cae, cae_clean_error, cae_command, s, temp_files,
};
use cae::run_folder::MODEL_FILE;

const EPOCHS: &str = "2";
/// Far longer than any run here takes on two busy cores; only reached when something hangs.
const PATIENCE: Duration = Duration::from_secs(300);

/// The flags of every run: the small real dataset, shuffled (so a resumed run must also restore
/// the epoch order), [`EPOCHS`] epochs unless `extra` says otherwise, plus `extra`.
fn train_args(run: &Path, extra: &[&str]) -> Vec<String> {
    let data = common::cifar_subset();
    let mut args: Vec<String> = [
        "train",
        "--dataset",
        "folder",
        "--data-dir",
        s(&data),
        "--train-limit",
        "640",
        "--val-limit",
        "200",
        "--shuffle",
        "--out",
        s(run),
    ]
    .map(String::from)
    .to_vec();
    if !extra.contains(&"--epochs") {
        args.extend(["--epochs".to_string(), EPOCHS.to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn train(run: &Path, extra: &[&str]) -> String {
    let args = train_args(run, extra);
    cae(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn train_error(run: &Path, extra: &[&str], needles: &[&str]) -> String {
    let args = train_args(run, extra);
    cae_clean_error(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        needles,
    )
}

fn spawn_train(run: &Path, extra: &[&str]) -> Child {
    let args = train_args(run, extra);
    cae_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cae starts")
}

/// The uninterrupted run every interrupted one must reproduce, trained once per test binary.
struct Reference {
    model: Vec<u8>,
    metrics: String,
    seconds: f64,
    _dir: tempfile::TempDir,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let started = Instant::now();
        train(&run, &[]);
        Reference {
            model: fs::read(run.join(MODEL_FILE)).unwrap(),
            metrics: fs::read_to_string(run.join("metrics.csv")).unwrap(),
            seconds: started.elapsed().as_secs_f64(),
            _dir: dir,
        }
    })
}

fn assert_matches_reference(run: &Path) {
    let reference = reference();
    let model = fs::read(run.join(MODEL_FILE)).unwrap();
    assert!(
        model == reference.model,
        "the final weights differ from the uninterrupted run's"
    );
    let metrics = fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics, reference.metrics);
    assert_eq!(temp_files(run), Vec::<String>::new());
}

/// Waits until `path` exists, failing if `child` ends first.
fn wait_for(path: &Path, child: &mut Child) {
    let started = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("cae ended ({status}) before {} appeared", path.display());
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `signal` at once, without spawning `kill(1)`: the second epoch of these runs takes about
/// a second on two cores, and the signal must arrive within it.
fn send_signal(child: &Child, signal: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    let pid = i32::try_from(child.id()).expect("a pid fits in i32");
    // SAFETY: kill(2) only reads its two integer arguments.
    let result = unsafe { kill(pid, signal) };
    assert_eq!(result, 0, "kill({pid}, {signal}) failed");
}

fn assert_killed_by(output: &Output, signal: i32) {
    assert_eq!(
        output.status.signal(),
        Some(signal),
        "cae was not stopped by signal {signal} ({}); stdout: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
}

const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;

#[test]
fn sigint_after_the_first_checkpoint_then_resume_matches_an_uninterrupted_run() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    // On two cores busy with other tests the run can still finish before the signal is
    // delivered; that says nothing about resuming, so it is tried again in a fresh folder.
    let mut attempt = 0;
    let run = loop {
        attempt += 1;
        let run = tmp.path().join(format!("run-{attempt}"));
        let mut child = spawn_train(&run, &[]);
        wait_for(&run.join(CHECKPOINT_FILE), &mut child);
        send_signal(&child, SIGINT);
        let output = child.wait_with_output().unwrap();
        if output.status.success() && attempt < 3 {
            eprintln!("attempt {attempt}: the run finished before SIGINT arrived");
            continue;
        }
        // Ctrl-C stops at the end of the batch, says what the checkpoint holds and how to go on.
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("error: interrupted in epoch 2"), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "the checkpoint of epoch 1 in {} is kept",
                run.display()
            )),
            "{stderr}"
        );
        assert!(stderr.contains("resume with: cae train "), "{stderr}");
        assert!(stderr.trim_end().ends_with("--resume"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!run.join(MODEL_FILE).exists(), "the run had finished");
        assert_eq!(temp_files(&run), Vec::<String>::new());
        break run;
    };

    let stdout = train(&run, &["--resume"]);
    assert!(stdout.contains(&format!("epoch   2/{EPOCHS}")), "{stdout}");
    assert!(
        !stdout.contains("epoch   1/"),
        "epoch 1 was trained again: {stdout}"
    );
    assert_matches_reference(&run);
}

#[test]
fn sigkill_at_a_random_moment_then_resume_matches_an_uninterrupted_run() {
    let reference = reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let delay = Duration::from_secs_f64(rand::random_range(0.0..0.9 * reference.seconds));
    let mut child = spawn_train(&run, &[]);
    thread::sleep(delay);
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    eprintln!(
        "killed after {delay:?} ({}); checkpoint then: {}",
        output.status,
        run.join(CHECKPOINT_FILE).exists()
    );

    train(&run, &["--resume"]);
    assert_matches_reference(&run);
}

#[test]
fn kill_before_the_first_checkpoint_then_resume_starts_from_scratch() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = spawn_train(&run, &[]);
    wait_for(&run.join("config.json"), &mut child);
    child.kill().unwrap();
    assert_killed_by(&child.wait_with_output().unwrap(), SIGKILL);
    assert!(!run.join(CHECKPOINT_FILE).exists(), "epoch 1 had finished");

    let stdout = train(&run, &["--resume"]);
    assert!(stdout.contains("starting from scratch"), "{stdout}");
    assert_matches_reference(&run);
}

#[test]
fn resume_without_a_checkpoint_refuses_to_overwrite_a_run_that_got_further() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &[]);
    let model = run.join(MODEL_FILE);
    let kept = [
        MODEL_FILE,
        "epochs.csv",
        "metrics.csv",
        "recon_epoch_02.png",
    ]
    .map(|name| (name, fs::read(run.join(name)).unwrap()));
    fs::remove_file(run.join(CHECKPOINT_FILE)).unwrap();

    let error = train_error(
        &run,
        &["--resume"],
        &[
            &format!("cannot resume {}", run.display()),
            "no checkpoint.safetensors",
            "model.safetensors, epochs.csv with 2 epochs, 2 reconstruction grids",
            &format!("--init {} --out", model.display()),
        ],
    );
    assert!(!error.contains("starting from scratch"), "{error}");
    for (name, bytes) in &kept {
        assert!(
            fs::read(run.join(name)).unwrap() == *bytes,
            "{name} changed"
        );
    }
    // The way out it offers works.
    let next = tmp.path().join("next");
    train(&next, &["--init", s(&model), "--epochs", "1"]);
    assert!(next.join(MODEL_FILE).is_file());
}

#[test]
fn a_damaged_checkpoint_on_resume_says_so_and_what_is_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &["--epochs", "1"]);
    let checkpoint = run.join(CHECKPOINT_FILE);
    let bytes = fs::read(&checkpoint).unwrap();
    fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    let model = fs::read(run.join(MODEL_FILE)).unwrap();
    let metrics = fs::read(run.join("metrics.csv")).unwrap();

    train_error(
        &run,
        &["--resume"],
        &[
            &format!("cannot resume the run in {}", run.display()),
            "checkpoint.safetensors is damaged or unreadable",
            "the metrics and pictures of its finished epochs are intact",
            &format!("--init {} --out", run.join(MODEL_FILE).display()),
        ],
    );
    assert_eq!(fs::read(&checkpoint).unwrap(), &bytes[..bytes.len() / 2]);
    assert!(fs::read(run.join(MODEL_FILE)).unwrap() == model);
    assert_eq!(fs::read(run.join("metrics.csv")).unwrap(), metrics);
}

#[test]
fn a_second_process_on_the_same_run_folder_is_refused_naming_it_and_the_holder() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut first = spawn_train(&run, &[]);
    // The lock is taken before config.json is written.
    wait_for(&run.join("config.json"), &mut first);
    let holder = format!("PID {}", first.id());
    let needles = ["is in use by another cae process", s(&run), &holder];
    train_error(&run, &["--resume"], &needles);
    train_error(&run, &[], &needles);

    let output = first.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the first run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_matches_reference(&run);
    // The lock went with its holder.
    train(&run, &["--resume"]);
}

#[test]
fn a_diverging_first_epoch_stops_naming_epoch_and_batch_and_writes_no_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let needles = [
        "training diverged: the loss is",
        "at epoch 1, ",
        "batch ",
        "there is no checkpoint",
        "lower --lr",
    ];
    train_error(&run, &["--lr", "1000"], &needles);
    assert!(!run.join(CHECKPOINT_FILE).exists());
    assert!(!run.join(MODEL_FILE).exists());
}

#[test]
fn a_diverging_later_epoch_keeps_the_last_good_checkpoint_and_resumes_with_a_lower_lr() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &["--epochs", "1"]);
    let good = fs::read(run.join(CHECKPOINT_FILE)).unwrap();
    let model = fs::read(run.join(MODEL_FILE)).unwrap();

    let needles = [
        "training diverged: the loss is",
        "at epoch 2, ",
        "batch ",
        "the checkpoint of epoch 1",
        "is kept",
        "--resume and a lower --lr",
    ];
    train_error(
        &run,
        &["--resume", "--epochs", "3", "--lr", "1000"],
        &needles,
    );
    assert!(fs::read(run.join(CHECKPOINT_FILE)).unwrap() == good);
    assert!(fs::read(run.join(MODEL_FILE)).unwrap() == model);
    assert_eq!(temp_files(&run), Vec::<String>::new());

    let stdout = train(&run, &["--resume", "--epochs", "2", "--lr", "0.0005"]);
    assert!(stdout.contains("resuming with --lr 0.0005"), "{stdout}");
    assert!(stdout.contains("epoch   2/2"), "{stdout}");
    assert!(fs::read(run.join(MODEL_FILE)).unwrap() != model);
}

#[test]
fn an_lr_drop_trains_as_resuming_by_hand_with_the_lower_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let scheduled = tmp.path().join("scheduled");
    let stdout = train(&scheduled, &["--lr-drop", "2:0.5"]);
    assert!(
        stdout.contains("epoch 2: learning rate 0.0005 (was 0.001)"),
        "{stdout}"
    );
    let config = fs::read_to_string(scheduled.join("config.json")).unwrap();
    assert!(config.contains("\"lr_drop\": \"2:0.5\""), "{config}");

    let by_hand = tmp.path().join("by-hand");
    train(&by_hand, &["--epochs", "1"]);
    train(&by_hand, &["--resume", "--epochs", "2", "--lr", "0.0005"]);
    let model = fs::read(scheduled.join(MODEL_FILE)).unwrap();
    assert!(fs::read(by_hand.join(MODEL_FILE)).unwrap() == model);

    // Stopped before the drop and resumed after it, the run drops on time.
    let resumed = tmp.path().join("resumed");
    train(&resumed, &["--epochs", "1", "--lr-drop", "2:0.5"]);
    let stdout = train(&resumed, &["--resume", "--lr-drop", "2:0.5"]);
    assert!(stdout.contains("epoch 2: learning rate 0.0005"), "{stdout}");
    assert!(fs::read(resumed.join(MODEL_FILE)).unwrap() == model);
    // A schedule added on resume applies from the next epoch.
    let stdout = train(&by_hand, &["--resume", "--epochs", "3", "--lr-drop", "3"]);
    assert!(
        stdout.contains("resuming with --lr 0.001 (the run so far used 0.0005)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("epoch 3: learning rate 0.0001 (was 0.0005)"),
        "{stdout}"
    );
}

/// A tmpfs mounted for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` reads it) on `dir`; fails the test, saying
    /// why, when that is not possible (it needs root).
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir),
            ])
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "cannot mount a {size} tmpfs on {} to simulate a full disk (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").args(["-l", s(&self.0)]).status();
    }
}

/// Writes `path` until the disk is full; returns the bytes written.
fn fill_disk(path: &Path) -> usize {
    let mut file = fs::File::create(path).unwrap();
    let chunk = [0xa5u8; 4096];
    let mut written = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {} failed otherwise: {e}", path.display()),
        }
    }
    written
}

#[test]
fn a_full_disk_fails_cleanly_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    let _mount = Tmpfs::mount(&disk, "3m");
    let run = disk.join("run");
    // A small model, so that an epoch's files fit in 3 MiB; many epochs, so it is still running.
    let small = ["--latent", "16", "--channels", "4"];
    let mut child = spawn_train(&run, &[&small[..], &["--epochs", "50"]].concat());
    wait_for(&run.join(CHECKPOINT_FILE), &mut child);
    let filler = disk.join("filler");
    assert!(fill_disk(&filler) > 0, "the disk was full already");

    let output = child.wait_with_output().unwrap();
    let needles = [
        "cannot save epoch",
        "is kept",
        "any previous version is intact",
        "No space left on device",
    ];
    assert_clean_failure(&output, &needles);
    assert_eq!(temp_files(&run), Vec::<String>::new());
    let done = checkpoint_epochs_done(&run.join(CHECKPOINT_FILE));
    assert!(done >= 1);

    fs::remove_file(&filler).unwrap();
    let epochs = (done + 1).to_string();
    let mut resume = small.to_vec();
    resume.extend(["--resume", "--epochs", &epochs]);
    train(&run, &resume);
    let rows = fs::read_to_string(run.join("epochs.csv"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(rows, done + 2, "header and {} epochs", done + 1);
}

/// The epochs a checkpoint has finished, from its safetensors metadata (`cae.checkpoint`, the run
/// state as JSON), read with the safetensors crate rather than cae's own reader.
fn checkpoint_epochs_done(path: &Path) -> usize {
    let bytes = fs::read(path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let state = &metadata.metadata().as_ref().unwrap()["cae.checkpoint"];
    let state: serde_json::Value = serde_json::from_str(state).unwrap();
    state["epochs_done"].as_u64().unwrap() as usize
}
