#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;
struct Clock(u64);
impl Clock {
    fn now() -> Self { Clock(std::fs::read_to_string("/proc/thread-self/schedstat").unwrap().split_whitespace().next().unwrap().parse().unwrap()) }
    fn ms(&self) -> f64 { (Clock::now().0 - self.0) as f64 / 1e6 }
}
fn rotate_old(img: &mut saln::augment::Image, radians: f64) {
    let (h, w) = (img.height, img.width);
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (s, c) = radians.sin_cos();
    let plane = h * w;
    let mut out = vec![0.0f32; img.data.len()];
    for y in 0..h {
        for x in 0..w {
            let (ox, oy) = (x as f64 - cx, y as f64 - cy);
            let sx = c * ox + s * oy + cx;
            let sy = -s * ox + c * oy + cy;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
            let (x0, y0) = (x0 as i64, y0 as i64);
            for ch in 0..img.channels {
                let src = &img.data[ch * plane..(ch + 1) * plane];
                let at = |yy: i64, xx: i64| -> f32 {
                    if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w { src[yy as usize * w + xx as usize] } else { 0.0 }
                };
                out[ch * plane + y * w + x] = at(y0, x0) * (1.0 - fx) * (1.0 - fy) + at(y0, x0 + 1) * fx * (1.0 - fy) + at(y0 + 1, x0) * (1.0 - fx) * fy + at(y0 + 1, x0 + 1) * fx * fy;
            }
        }
    }
    img.data = out;
}
fn main() {
    use saln::augment::{AugmentOp, Augmenter};
    let raw = saln::source::RawImage { channels: 3, height: 224, width: 224, data: (0..3 * 224 * 224).map(|i| (i % 251) as u8).collect() };
    let base = saln::augment::Image::from_raw(&raw);
    let new = Augmenter::new(vec![AugmentOp::Rotate { max_degrees: 15.0 }]);
    for round in 0..3 {
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Clock::now();
            for k in 0..50 { let mut i = base.clone(); rotate_old(&mut i, 0.1 + k as f64 * 0.001); std::hint::black_box(i); }
            best.0 = best.0.min(t.ms() / 50.0);
            let t = Clock::now();
            for k in 0..50 { std::hint::black_box(new.train(&raw, &mut saln::rng::Rng::new(k)).unwrap()); }
            best.1 = best.1.min(t.ms() / 50.0);
        }
        println!("round {round}: old rotate {:.3} ms, new rotate (incl. u8->f32) {:.3} ms", best.0, best.1);
    }
}
