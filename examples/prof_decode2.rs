use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(format!("{dir}/class_00")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.truncate(200);
    let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    for round in 0..2 {
    let t = Instant::now();
    let mut v = Vec::new();
    for b in &bytes { v.push(image::load_from_memory_with_format(b, image::ImageFormat::Jpeg).unwrap().into_rgb8().into_raw()); }
    let a = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    let t = Instant::now();
    
    for hwc in &v {
        let plane = hwc.len() / 3;
        let mut chw = vec![0u8; 3 * plane];
        let (r, rest) = chw.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for i in 0..plane { r[i] = hwc[3*i]; g[i] = hwc[3*i+1]; b[i] = hwc[3*i+2]; }
        std::hint::black_box(&chw); drop(chw);
    }
    let tr = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    let t = Instant::now();
    for b in &bytes { std::hint::black_box(b.windows(2).rposition(|w| w == [0xff, 0xda])); }
    let eoi = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    let t = Instant::now();
    for b in &bytes { std::hint::black_box(saln::source::decode::decode(b, 3).unwrap()); }
    let full = t.elapsed().as_secs_f64() / 200.0 * 1e3;
    println!("round {round}: decode+rgb8 {a:.3}  transpose {tr:.3}  eoi-scan {eoi:.3}  saln decode {full:.3} ms/img");
    }
}
