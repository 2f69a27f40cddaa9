//! Device handling, as far as a machine without a GPU can check it: what `device: auto`
//! resolves to, `extractor.half` refused on the CPU, `device: cuda` refused where libtorch
//! sees no CUDA device (by `validate`, `run`, `curate`, `pretrain`, `bench selection` and the
//! loader API, each naming the key), tensors delivered on the loader's device, and the
//! spectral selection computed on the device of its features.
//!
//! The CUDA side of each branch is checked by `scripts/gpu-check.sh` on a GPU machine
//! (docs/gpu.md); on such a machine the no-GPU assertions here are skipped with a note.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use saln::config::PipelineConfig;
use saln::loader::Loader;
use saln::rng::Rng;
use saln::select::spectral::{self, SpectralConfig};
use saln::select::{lanczos, Policy, Solver, WeightMapping};
use tch::{Device, Kind, Tensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_saln-pipe"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `true` when this machine has no CUDA device (the case these tests are about); prints why
/// a test is skipped otherwise.
fn no_gpu(what: &str) -> bool {
    let none = !tch::Cuda::is_available();
    if !none {
        eprintln!("a CUDA device is present: {what} not checked here (scripts/gpu-check.sh does)");
    }
    none
}

/// A small IDX data set of 8x8 grey images in 10 classes (a bright 3x3 block whose place
/// depends on the class, plus noise): 400 training, 100 test images.
fn data(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let make = |n: usize, seed: usize| {
        let mut px = Vec::with_capacity(n * 64);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let k = (i * 7 + seed) % 10;
            let (r0, c0) = (k / 4 * 2, k % 4 + k / 8);
            for p in 0..64 {
                let (r, c) = (p / 8, p % 8);
                let on = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&c);
                let noise = ((i * 131 + p * 31 + seed) % 48) as u8;
                px.push(if on { 192 } else { 0 } + noise);
            }
            labels.push(k as u8);
        }
        (px, labels)
    };
    for (split, n, seed) in [("train", 400, 0), ("t10k", 100, 3)] {
        let (px, labels) = make(n, seed);
        saln::source::idx::write_pair(
            &root.join(format!("{split}-images-idx3-ubyte")),
            &root.join(format!("{split}-labels-idx1-ubyte")),
            &px,
            &labels,
            8,
            8,
            false,
        )
        .unwrap();
    }
    root
}

/// A pipeline file over [`data`] in `dir`: a tiny reference CNN (weights at
/// `dir/reference.safetensors`, made by no one: the tests here need them only to be named),
/// one epoch, the report at `dir/report.json`.
fn pipeline(dir: &Path, device: &str, policy: &str, half: bool) -> PathBuf {
    let yaml = format!(
        "seed: 1\n\
         device: {device}\n\
         torch_threads: 1\n\
         source:\n  idx: {{ dir: {data} }}\n  holdout: 100\n\
         augment:\n  workers: 1\n  ops:\n    - normalize: {{ mean: [0.5], std: [0.5] }}\n\
         superbatch: {{ size: 64 }}\n\
         extractor:\n  weights: {weights}\n  arch: {{ conv1: 4, conv2: 8, hidden: 16 }}\n  \
         pretrain: {{ epochs: 1, batch_size: 50 }}\n  half: {half}\n\
         selection: {{ policy: {policy}, keep_ratio: 0.5 }}\n\
         trainer: {{ epochs: 1, arch: {{ conv1: 4, conv2: 8, hidden: 16 }} }}\n\
         report: {{ path: {report}, progress_seconds: 0 }}\n",
        data = data(dir).display(),
        weights = dir.join("reference.safetensors").display(),
        report = dir.join("report.json").display(),
    );
    let path = dir.join(format!("{device}-{policy}-{half}.yaml").replace(':', "_"));
    std::fs::write(&path, yaml).unwrap();
    path
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// Runs `saln-pipe ARGS` and asserts exit code 2 (invalid configuration) with every one of
/// `wanted` in its output.
fn refused(args: &[&str], file: &Path, wanted: &[&str]) {
    let o = bin().args(args).arg(file).output().unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "saln-pipe {args:?}: {out}");
    for w in wanted {
        assert!(
            out.contains(w),
            "saln-pipe {args:?}: `{w}` missing in: {out}"
        );
    }
}

/// The issues of a configuration error, as (key, message).
fn issues(e: saln::Error) -> Vec<(String, String)> {
    match e {
        saln::Error::ConfigInvalid { issues, .. } => {
            issues.into_iter().map(|i| (i.key, i.message)).collect()
        }
        other => panic!("expected a configuration error, got: {other}"),
    }
}

#[test]
fn auto_is_the_cpu_without_a_gpu_and_cuda_n_parses() {
    let expected = if tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    assert_eq!(saln::device::parse("auto"), Ok(expected));
    // The default of every pipeline is `auto`.
    let cfg = PipelineConfig::from_yaml_str("source:\n  idx: { dir: /x }\n", "t").unwrap();
    assert_eq!(cfg.device, "auto");
    assert_eq!(cfg.device(), expected);
    assert_eq!(saln::device::parse("cuda"), Ok(Device::Cuda(0)));
    assert_eq!(saln::device::parse("cuda:3"), Ok(Device::Cuda(3)));
    for bad in ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1", ""] {
        let e = saln::device::parse(bad).unwrap_err();
        assert!(
            e.contains("expected auto, cpu, cuda or cuda:N"),
            "{bad}: {e}"
        );
    }
    assert_eq!(saln::device::name(Device::Cpu), "cpu");
    assert_eq!(saln::device::name(Device::Cuda(2)), "cuda:2");
    assert_eq!(saln::device::check(Device::Cpu), Ok(()));
    // A device name that cannot parse is a value error of `device`, with its line.
    let e = PipelineConfig::from_yaml_str("source:\n  idx: { dir: /x }\ndevice: gpu\n", "t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("device (line 3)") && e.contains("unknown device `gpu`"),
        "{e}"
    );
}

#[test]
fn a_run_with_device_auto_reports_the_device_it_picked() {
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(dir.path(), "auto", "uniform", false);
    let o = bin().arg("run").arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let expected = if tch::Cuda::is_available() {
        "cuda:0"
    } else {
        "cpu"
    };
    assert_eq!(report(dir.path())["device"], expected);
    // `bench selection --device auto` says where it ran.
    let o = bin()
        .args(["bench", "selection", "--device", "auto", "--sizes", "40"])
        .args(["--dims", "8", "--repeats", "1", "--threads", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("device {expected},")),
        "{}",
        text(&o)
    );
}

#[test]
fn the_loader_delivers_tensors_on_its_device() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PipelineConfig::load(&pipeline(dir.path(), "auto", "uniform", false)).unwrap();
    let mut loader = Loader::from_config(&cfg).unwrap();
    let device = loader.info().device;
    assert_eq!(device, cfg.device());
    let mut batches = 0;
    for item in loader.by_ref() {
        let Some(b) = item.unwrap().batch() else {
            continue; // the end of an epoch
        };
        assert_eq!(b.images.device(), device);
        assert_eq!(b.labels.device(), device);
        assert_eq!(b.images.kind(), Kind::Float);
        batches += 1;
    }
    assert!(batches > 0);
    loader.finish().unwrap();
}

#[test]
fn half_precision_on_the_cpu_is_a_configuration_error_naming_extractor_half() {
    let dir = tempfile::tempdir().unwrap();
    let mut devices = vec!["cpu"];
    if no_gpu("half with device: auto") {
        devices.push("auto");
    }
    for device in devices {
        let file = pipeline(dir.path(), device, "saln", true);
        let wanted = [
            "extractor.half",
            "float16 needs a CUDA device, and the pipeline runs on cpu (set half: false)",
        ];
        refused(&["validate"], &file, &wanted);
        refused(&["run"], &file, &wanted);
        let out = dir.path().join("export");
        refused(&["curate", "--out", out.to_str().unwrap()], &file, &wanted);
        assert!(
            !out.exists(),
            "a refused curate run must not create its export"
        );
        // The loader API refuses it the same way, before anything starts.
        let cfg = PipelineConfig::load(&file).unwrap();
        let got = issues(Loader::from_config(&cfg).unwrap_err());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "extractor.half");
        // A policy that needs no features never builds the extractor: half is not checked.
        let file = pipeline(dir.path(), device, "uniform", true);
        let o = bin().arg("validate").arg(&file).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}

#[test]
fn cuda_on_a_machine_without_one_is_a_configuration_error_naming_device() {
    if !no_gpu("cuda refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wanted = [
        "device",
        "cuda:0 requested but libtorch sees 0 CUDA device(s)",
    ];
    let file = pipeline(dir.path(), "cuda", "saln", false);
    refused(&["validate"], &file, &wanted);
    refused(&["run"], &file, &wanted);
    let out = dir.path().join("export");
    refused(&["curate", "--out", out.to_str().unwrap()], &file, &wanted);
    assert!(
        !out.exists(),
        "a refused curate run must not create its export"
    );
    refused(&["pretrain"], &file, &wanted);
    assert!(!dir.path().join("reference.safetensors").exists());
    // A policy without features needs no extractor, but still the device.
    refused(
        &["run"],
        &pipeline(dir.path(), "cuda", "uniform", false),
        &wanted,
    );
    let cfg = PipelineConfig::load(&file).unwrap();
    let got = issues(Loader::from_config(&cfg).unwrap_err());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "device");
    // With half: true the device is the one problem (half is fine on a CUDA device), and
    // cuda:N names N.
    let file = pipeline(dir.path(), "cuda:1", "saln", true);
    refused(
        &["validate"],
        &file,
        &[
            "device",
            "cuda:1 requested but libtorch sees 0 CUDA device(s)",
        ],
    );
    let o = bin().arg("validate").arg(&file).output().unwrap();
    assert!(!text(&o).contains("extractor.half"), "{}", text(&o));
    // The benchmark's device is a command-line flag: a command-line error naming it.
    let o = bin()
        .args(["bench", "selection", "--device", "cuda:1", "--sizes", "40"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for w in [
        "--device",
        "cuda:1 requested but libtorch sees 0 CUDA device(s)",
    ] {
        assert!(text(&o).contains(w), "`{w}` missing in: {}", text(&o));
    }
}

/// Clustered features: `n` samples of dimension `d` around `k` centres.
fn features(n: usize, d: usize, k: usize, kind: Kind) -> Tensor {
    saln::select::bench::clustered_features(n, d, k, 7, Device::Cpu)
        .unwrap()
        .to_kind(kind)
}

#[test]
fn selection_runs_on_the_device_and_in_the_precision_of_its_features() {
    for kind in [Kind::Float, Kind::Double] {
        let f = features(150, 12, 3, kind);
        let u = spectral::normalized_rows(&f).unwrap();
        assert_eq!((u.device(), u.kind()), (Device::Cpu, kind));
        for w in [
            WeightMapping::Clip,
            WeightMapping::Shift,
            WeightMapping::Knn,
        ] {
            let s = spectral::similarity(&u, w, 10).unwrap();
            assert_eq!((s.device(), s.kind()), (Device::Cpu, Kind::Double));
            let l = spectral::laplacian(&s).unwrap();
            assert_eq!(l.device(), Device::Cpu);
        }
        // The iterative solver allocates its start vectors on the device it is given.
        let l = spectral::laplacian(&spectral::similarity(&u, WeightMapping::Clip, 10).unwrap())
            .unwrap();
        let r = lanczos::lowest_pair(
            &mut |x| l.f_matmul(x),
            150,
            Some(&Tensor::ones([150], (Kind::Double, Device::Cpu))),
            300.0,
            &Default::default(),
            Rng::new(1),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(r.vector.device(), Device::Cpu);
        // Both solvers agree whatever the precision of the features.
        let v = |solver| {
            let cfg = SpectralConfig {
                solver,
                ..Default::default()
            };
            spectral::fiedler(&f, &cfg, Rng::new(2)).unwrap().vector
        };
        let (dense, iterative) = (v(Solver::Dense), v(Solver::Lanczos));
        let dot: f64 = dense.iter().zip(&iterative).map(|(a, b)| a * b).sum();
        assert!(dot.abs() > 0.9999, "{kind:?}: |<v, v*>| = {dot}");
    }
    // On a GPU (a machine that builds the tests there): CUDA features give the CPU's vector.
    if tch::Cuda::is_available() {
        let f = features(300, 16, 4, Kind::Float);
        let cfg = SpectralConfig::default();
        let cpu = spectral::fiedler(&f, &cfg, Rng::new(3)).unwrap();
        let gpu = spectral::fiedler(&f.to_device(Device::Cuda(0)), &cfg, Rng::new(3)).unwrap();
        let dot: f64 = cpu.vector.iter().zip(&gpu.vector).map(|(a, b)| a * b).sum();
        assert!(dot > 0.9999, "cuda vs cpu: {dot}");
    }
}

#[test]
fn the_selector_takes_features_on_any_device_and_precision() {
    let cfg = PipelineConfig::from_yaml_str(
        "source:\n  idx: { dir: /x }\nselection: { policy: saln, keep_ratio: 0.25 }\n",
        "t",
    )
    .unwrap();
    let selector = saln::select::Selector::new(cfg.selector_config());
    assert_eq!(selector.config().policy, Policy::Saln);
    let f = features(200, 8, 3, Kind::Float);
    let a = selector.select(200, Some(&f), 0, 0.0).unwrap();
    let b = selector
        .select(200, Some(&f.to_kind(Kind::Double)), 0, 0.0)
        .unwrap();
    assert_eq!(a.kept.len(), 50);
    assert_eq!(
        a.kept, b.kept,
        "float32 and float64 features select the same samples"
    );
}

/// `scripts/gpu-check.sh --dry-run` (docs/gpu.md) on this machine: it gathers what a GPU run
/// needs and runs every check on cpu, with the CUDA-only ones refused. Run here with the
/// binary this test build made, so that the script cannot rot.
#[test]
fn the_gpu_check_dry_run_passes_on_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("target/fixtures/.stamp").exists(),
        "the fixture models are missing: run `make fixtures`"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = Command::new("bash")
        .arg(root.join("scripts/gpu-check.sh"))
        .arg("--dry-run")
        .arg(dir.path().join("dry"))
        .env("SALN_BIN", env!("CARGO_BIN_EXE_saln-pipe"))
        .env("OUT", &out)
        .current_dir(root)
        .output()
        .unwrap();
    let printed = text(&o);
    assert!(o.status.success(), "{printed}");
    let table = std::fs::read_to_string(out.join("gpu-check.md")).unwrap();
    assert!(printed.contains(&table), "{printed}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| check "))
        .collect();
    assert_eq!(rows.len(), 13, "{table}");
    for r in &rows {
        assert!(r.contains(" | ok | "), "{r}");
    }
    for check in [
        "validate device: cuda",
        "bench selection",
        "curate, half",
        "demo run, device: auto",
        "resnet18 extractor, half",
        "loader-only benchmark",
    ] {
        assert!(table.contains(&format!("| {check}")), "{check}: {table}");
    }
    assert!(table.contains("refused on cpu, exit 2: extractor.half: float16 needs a CUDA device"));
    assert!(table.contains("13 of 13 checks passed."), "{table}");
    assert!(out.join("gpu-check-logs/demo.json").exists());
}
