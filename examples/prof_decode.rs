use saln::augment::{AugmentOp, Augmenter, Size};
use saln::rng::Rng;
struct Instant(u64);
impl Instant {
    fn now() -> Self { Instant(std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse().unwrap()) }
    fn elapsed(&self) -> std::time::Duration { std::time::Duration::from_nanos(Instant::now().0 - self.0) }
}
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(format!("{dir}/class_00")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.truncate(200);
    let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let t = Instant::now();
    let mut imgs = Vec::new();
    for b in &bytes { imgs.push(saln::source::decode::decode(b, 3).unwrap()); }
    let dec = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    let t = Instant::now();
    for b in &bytes { let i = image::load_from_memory(b).unwrap(); std::hint::black_box(i); }
    let raw_dec = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    let ops = |v: Vec<AugmentOp>| Augmenter::new(v);
    let norm = AugmentOp::Normalize { mean: vec![0.485, 0.456, 0.406], std: vec![0.229, 0.224, 0.225] };
    let stages: Vec<(&str, Augmenter)> = vec![
        ("resize", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }])),
        ("resize+flip", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }, AugmentOp::Hflip { p: 1.0 }])),
        ("resize+rot", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }, AugmentOp::Rotate { max_degrees: 15.0 }])),
        ("resize+bright", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }, AugmentOp::Brightness { max_delta: 0.2 }])),
        ("resize+norm", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }, norm.clone()])),
        ("all", ops(vec![AugmentOp::Resize { size: Size::Exact([224, 224]) }, AugmentOp::Hflip { p: 0.5 }, AugmentOp::Rotate { max_degrees: 15.0 }, AugmentOp::Brightness { max_delta: 0.2 }, norm.clone()])),
    ];
    println!("decode {dec:.3} ms/img (image crate alone {raw_dec:.3})");
    for (name, a) in stages {
        let t = Instant::now();
        for (k, im) in imgs.iter().enumerate() { std::hint::black_box(a.train(im, &mut Rng::new(k as u64)).unwrap()); }
        println!("{name:14} {:.3} ms/img", t.elapsed().as_secs_f64() / 200.0 * 1e3);
    }
}
