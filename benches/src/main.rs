//! `kernel-compare`: the measurements behind `cargo xtask bench`.
//!
//! ```text
//! kernel-compare table [--quick] [--csv PATH] [--sizes 10,20]
//!              [--rows-only]                    sizes (powers of two) x types x threads, targets
//! kernel-compare incache [--quick]              in-cache ns/element (1 thread)
//! kernel-compare roofline [--quick]             the roofline against simpler loops
//! kernel-compare threshold [--quick]            serial vs parallel around PAR_THRESHOLD
//! ```
//!
//! Every figure is a median over interleaved rounds and every ratio compares
//! routines measured in the same rounds.

use std::fmt::Write as _;
use std::io::Write as _;
use std::mem::MaybeUninit;
use std::time::Duration;

use metasgd::Element;
use metasgd::kernels::{self, Kernel};
use metasgd::ndarray::{Array1, ArrayView1, ArrayViewMut1};
use metasgd::{MetaSGD, Optimizer};
use metasgd_benches::{
    Interleaved, Simple, bytes_per_element, naive_step, resnet50_sizes, roofline, roofline_prev,
    sink,
};

const INNER_STEPS: usize = 5;

struct Settings {
    /// Only the main rows (no list, allocation or roofline checks).
    rows_only: bool,
    rounds: usize,
    batch: Duration,
    sizes: Vec<usize>,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                rows_only: false,
                rounds: 3,
                batch: Duration::from_millis(2),
                sizes: vec![1 << 10, 1 << 16, 1 << 20],
            }
        } else {
            Self {
                rows_only: false,
                rounds: 15,
                batch: Duration::from_millis(20),
                sizes: vec![1 << 10, 1 << 16, 1 << 20, 1 << 24],
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let csv = args
        .iter()
        .position(|a| a == "--csv")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let mut settings = Settings::new(quick);
    settings.rows_only = args.iter().any(|a| a == "--rows-only");
    if let Some(list) = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
    {
        // Powers of two, e.g. `--sizes 20,24` for 1M and 16M elements.
        settings.sizes = list
            .split(',')
            .filter_map(|p| p.trim().parse::<u32>().ok())
            .map(|p| 1usize << p)
            .collect();
    }
    match args.first().map(String::as_str) {
        Some("table") => table(&settings, csv.as_deref()),
        Some("incache") => incache(quick),
        Some("threshold") => threshold(&Settings::new(quick)),
        Some("roofline") => roofline_check(&settings),
        _ => {
            eprintln!(
                "usage: kernel-compare (table [--quick] [--csv PATH] | incache [--quick] | threshold [--quick] | roofline [--quick])"
            );
            std::process::exit(2);
        }
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn progress(msg: &str) {
    eprintln!("  .. {msg}");
}

fn label(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}M", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}K", n >> 10),
        n => n.to_string(),
    }
}

/// Inputs of one size: finite, deterministic.
fn inputs<A: Element>(n: usize) -> (Array1<A>, Array1<A>, Array1<A>) {
    let theta = Array1::from(metasgd_kernels::testdata::values::<A>(n, 1, 0));
    let grad = Array1::from(metasgd_kernels::testdata::values::<A>(n, 2, 0));
    let alpha = Array1::from_elem(n, A::from(0.01).unwrap());
    (theta, grad, alpha)
}

/// The roofline baseline on arrays.
fn roofline_on<A: Element>(kernel: Kernel, t: &mut Array1<A>, a: &mut Array1<A>, g: &Array1<A>) {
    let slice = "contiguous inputs";
    roofline(
        kernel,
        t.as_slice_mut().expect(slice),
        a.as_slice_mut().expect(slice),
        g.as_slice().expect(slice),
    )
}

/// A simple loop with the roofline's traffic on arrays.
fn simple_on<A: Element>(
    k: Simple,
    threads: usize,
    t: &mut Array1<A>,
    a: &mut Array1<A>,
    g: &Array1<A>,
) {
    let slice = "contiguous inputs";
    k.run(
        threads,
        t.as_slice_mut().expect(slice),
        a.as_slice_mut().expect(slice),
        g.as_slice().expect(slice),
    )
}

fn optimizer<A: Element>() -> MetaSGD<A> {
    MetaSGD::new(A::from(0.01).unwrap()).with_inner_steps(INNER_STEPS)
}

/// One row of the main table.
struct Row {
    dtype: &'static str,
    n: usize,
    threads: usize,
    step_ns: f64,
    /// The fastest trivial loop with the update's traffic, measured in the same rounds.
    roof_ns: f64,
    /// Which loop that was.
    roof_kind: &'static str,
    naive_ns: f64,
    bytes: usize,
}

impl Row {
    fn ns_per_element(&self) -> f64 {
        self.step_ns / self.n as f64
    }
    fn gb_per_s(&self) -> f64 {
        (self.bytes * self.n) as f64 / self.step_ns
    }
    fn roofline_fraction(&self) -> f64 {
        self.roof_ns / self.step_ns
    }
    fn naive_speedup(&self) -> f64 {
        self.naive_ns / self.step_ns
    }
}

/// Checks once per type and size that the library and the naive version agree bit for bit.
fn check_bits<A: Element>(n: usize) -> bool
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (theta, grad, alpha) = inputs::<A>(n);
    let mut opt = optimizer::<A>();
    let got = opt.step(&theta, &grad).expect("step");
    let (want_t, want_a) = naive_step(&theta, &alpha, &grad, opt.get_alpha_lr(), INNER_STEPS);
    let lr = opt.get_per_param_lr().expect("alpha");
    got.iter().zip(&want_t).all(|(a, b)| a.bits() == b.bits())
        && lr.iter().zip(&want_a).all(|(a, b)| a.bits() == b.bits())
}

fn measure<A: Element>(s: &Settings, n: usize, threads: usize, naive_ns: Option<f64>) -> Row
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (mut theta, grad, _) = inputs::<A>(n);
    let (mut rt, rg, mut ra) = inputs::<A>(n);
    let (nt, ng, na) = inputs::<A>(n);
    // From 1M elements on, simpler loops with the same traffic run beside the
    // kernels' own trivial loop, and the fastest of them is the roofline.
    let simple = if n >= 1 << 20 {
        Simple::all()
    } else {
        Vec::new()
    };
    let mut simple_bufs: Vec<_> = simple.iter().map(|_| inputs::<A>(n)).collect();
    let mut opt = optimizer::<A>();
    let lr = opt.get_alpha_lr();
    let kernel = kernels::auto(n);
    let mut naive_state = (nt, na);
    let (step_ns, roofs, naive) = pool(threads).install(|| {
        let mut b = Interleaved::new();
        let step = b.add(|| {
            opt.step_inplace(theta.view_mut(), grad.view())
                .expect("step")
        });
        let mut roofs = vec![(
            "sweep",
            b.add(|| roofline_on(kernel, &mut rt, &mut ra, &rg)),
        )];
        for (&k, (t, g, a)) in simple.iter().zip(simple_bufs.iter_mut()) {
            let id = b.add(move || simple_on(k, threads, t, a, g));
            roofs.push((k.name(), id));
        }
        let naive = naive_ns.is_none().then(|| {
            b.add(|| {
                naive_state = naive_step(&naive_state.0, &naive_state.1, &ng, lr, INNER_STEPS);
            })
        });
        b.run(s.rounds, s.batch);
        let roofs: Vec<(&'static str, f64)> = roofs
            .into_iter()
            .map(|(k, i)| (k, b.median_ns(i)))
            .collect();
        (b.median_ns(step), roofs, naive.map(|i| b.median_ns(i)))
    });
    sink(naive_state);
    let dtype = if size_of::<A>() == 4 { "f32" } else { "f64" };
    let naive_ns = naive_ns.or(naive).unwrap_or(f64::NAN);
    let (roof_kind, roof_ns) = roofs
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("sweep", f64::NAN));
    Row {
        dtype,
        n,
        threads,
        step_ns,
        roof_ns,
        roof_kind,
        naive_ns,
        bytes: bytes_per_element::<A>(),
    }
}

fn print_header() {
    println!(
        "{:<5} {:>5} {:>7} {:>10} {:>8} {:>9} {:>12} {:>12}  fastest trivial loop",
        "type", "size", "threads", "ns/elem", "GB/s", "roofline", "vs naive", "ns/call"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<5} {:>5} {:>7} {:>10.4} {:>8.2} {:>9.3} {:>11.1}x {:>12.0}  {}",
        r.dtype,
        label(r.n),
        r.threads,
        r.ns_per_element(),
        r.gb_per_s(),
        r.roofline_fraction(),
        r.naive_speedup(),
        r.step_ns,
        r.roof_kind
    );
    let _ = std::io::stdout().flush();
}

fn rows_for<A: Element>(s: &Settings, rows: &mut Vec<Row>, ok: &mut bool)
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    for &n in &s.sizes {
        let dtype = if size_of::<A>() == 4 { "f32" } else { "f64" };
        if !check_bits::<A>(n) {
            println!("BITS DIFFER: {dtype} {n}: library and naive ndarray version disagree");
            *ok = false;
        }
        let mut naive = None;
        for threads in [1, 2] {
            progress(&format!("{dtype} {} on {threads} thread(s)", label(n)));
            let r = measure::<A>(s, n, threads, naive);
            naive = Some(r.naive_ns);
            print_row(&r);
            rows.push(r);
        }
    }
}

/// `step_list_inplace` over ResNet-50's tensors against one flat array of the same total size.
fn list_vs_flat(s: &Settings, threads: usize) -> (f64, f64, usize) {
    let sizes = resnet50_sizes();
    let total: usize = sizes.iter().sum();
    let mut tensors: Vec<Array1<f32>> = sizes.iter().map(|&n| inputs::<f32>(n).0).collect();
    let grads: Vec<Array1<f32>> = sizes.iter().map(|&n| inputs::<f32>(n).1).collect();
    let (mut flat, flat_g, _) = inputs::<f32>(total);
    let mut list_opt = optimizer::<f32>();
    let mut flat_opt = optimizer::<f32>();
    pool(threads).install(|| {
        let mut b = Interleaved::new();
        let list = b.add(|| {
            let mut views: Vec<ArrayViewMut1<f32>> =
                tensors.iter_mut().map(|t| t.view_mut()).collect();
            let gv: Vec<ArrayView1<f32>> = grads.iter().map(|g| g.view()).collect();
            list_opt
                .step_list_inplace(&mut views, &gv)
                .expect("list step");
        });
        let one = b.add(|| {
            flat_opt
                .step_inplace(flat.view_mut(), flat_g.view())
                .expect("flat step")
        });
        b.run(s.rounds, s.batch);
        (b.median_ns(list), b.median_ns(one), total)
    })
}

/// The allocating `step` against `step_inplace`, same size, same pool.
/// The allocating `step` against `step_inplace`, same size, same pool, and
/// what fresh memory alone costs: a new output buffer written once, minus
/// the same write into a buffer that already exists. Returns
/// `(allocating, in-place, fresh-memory cost)` in ns.
fn alloc_vs_inplace<A: Element>(s: &Settings, n: usize, threads: usize) -> (f64, f64, f64)
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (mut theta, grad, _) = inputs::<A>(n);
    let (theta2, grad2, _) = inputs::<A>(n);
    let mut a = optimizer::<A>();
    let mut b_opt = optimizer::<A>();
    let mut warm_buf = metasgd_kernels::output::uninit_slice::<A>(n);
    let fill = |v: &mut [MaybeUninit<A>]| {
        use rayon::prelude::*;
        v.par_chunks_mut(kernels::par::PAR_CHUNK)
            .for_each(|c| c.fill(MaybeUninit::new(A::one())));
    };
    pool(threads).install(|| {
        let mut b = Interleaved::new();
        let alloc = b.add(|| sink(a.step(&theta2, &grad2).expect("step")));
        let inplace = b.add(|| {
            b_opt
                .step_inplace(theta.view_mut(), grad.view())
                .expect("step")
        });
        let fresh = b.add(|| {
            let mut v = metasgd_kernels::output::uninit_slice::<A>(n);
            fill(&mut v);
            sink(v);
        });
        let warm = b.add(|| fill(&mut warm_buf));
        b.run(s.rounds, s.batch);
        let page_cost = b.median_ns(fresh) - b.median_ns(warm);
        (b.median_ns(alloc), b.median_ns(inplace), page_cost)
    })
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn table(s: &Settings, csv: Option<&str>) {
    println!("metasgd kernel comparison");
    println!("simd level: {}", kernels::simd_level().name());
    println!(
        "threads: 1 and 2 (machine: {}), inner_steps = {INNER_STEPS}, par threshold = {} elements, chunk = {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernels::PAR_THRESHOLD,
        kernels::par::PAR_CHUNK
    );
    println!(
        "medians of {} interleaved rounds; roofline = the fastest of the trivial loops with the update's traffic (theta += g, alpha -= g), all measured in the same rounds: the kernels' own SIMD loop with their alignment and scheduling (`sweep`), and from 1M elements on also a plain loop, the plain loop compiled for AVX2 and for AVX-512 (where the CPU has them) and a STREAM-style triad",
        s.rounds
    );
    println!();
    print_header();
    let mut rows = Vec::new();
    let mut ok = true;
    rows_for::<f32>(s, &mut rows, &mut ok);
    rows_for::<f64>(s, &mut rows, &mut ok);

    let mut out = String::from(
        "dtype,size,threads,ns_per_elem,gb_per_s,roofline_fraction,naive_speedup,step_ns,roof_ns,naive_ns,roof_kind\n",
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{},{},{},{:.5},{:.3},{:.4},{:.2},{:.1},{:.1},{:.1},{}",
            r.dtype,
            r.n,
            r.threads,
            r.ns_per_element(),
            r.gb_per_s(),
            r.roofline_fraction(),
            r.naive_speedup(),
            r.step_ns,
            r.roof_ns,
            r.naive_ns,
            r.roof_kind
        );
    }

    println!();
    println!("targets (f32 and f64, default features, Backend::Auto, inner_steps = {INNER_STEPS})");
    let find = |d: &str, n: usize, t: usize| {
        rows.iter()
            .find(|r| r.dtype == d && r.n == n && r.threads == t)
    };
    for (n, want) in [(1usize << 24, 0.90), (1 << 20, 0.85)] {
        for d in ["f32", "f64"] {
            for t in [1, 2] {
                if let Some(r) = find(d, n, t) {
                    let f = r.roofline_fraction();
                    println!(
                        "  1. roofline {d} {} {t}T: {f:.3} (target >= {want:.2}) {}",
                        label(n),
                        verdict(f >= want)
                    );
                }
            }
        }
    }
    println!(
        "  2. default build vs -C target-cpu=native: measured by `cargo xtask bench` (incache)"
    );
    if let Some(r) = find("f32", 1024, 1) {
        let ns = r.step_ns;
        println!(
            "  3. step_inplace, 1024 f32, 1 thread: {ns:.0} ns per call (target <= 1000) {}",
            verdict(ns <= 1000.0)
        );
    }
    if s.rows_only {
        return;
    }
    for t in [1, 2] {
        progress(&format!("ResNet-50 list vs flat, {t} thread(s)"));
        let (list, flat, total) = list_vs_flat(s, t);
        let ratio = flat / list;
        println!(
            "  4. ResNet-50 list (161 tensors, {total} f32) vs flat, {t}T: {:.2} ms vs {:.2} ms, ratio {ratio:.3} (target >= 0.90) {}",
            list / 1e6,
            flat / 1e6,
            verdict(ratio >= 0.90)
        );
        let _ = writeln!(
            out,
            "list_f32,{total},{t},,,{ratio:.4},,{list:.1},{flat:.1},"
        );
    }
    let big = *s.sizes.last().unwrap_or(&(1 << 20));
    for t in [1, 2] {
        for (d, (alloc, inplace, pages)) in [
            ("f32", alloc_vs_inplace::<f32>(s, big, t)),
            ("f64", alloc_vs_inplace::<f64>(s, big, t)),
        ] {
            let ratio = alloc / inplace;
            let floor = (inplace + pages) / inplace;
            println!(
                "  5. allocating step / in-place, {d} {} {t}T: {ratio:.3} (target <= 1.5) {}; fresh output pages alone cost {:.2} ms, a floor of {floor:.3}",
                label(big),
                verdict(ratio <= 1.5),
                pages / 1e6
            );
            let _ = writeln!(
                out,
                "alloc_{d},{big},{t},,,{ratio:.4},,{alloc:.1},{inplace:.1},{pages:.1}"
            );
        }
    }
    rule_rows(s, &mut out);
    for d in ["f32", "f64"] {
        if let (Some(one), Some(two)) = (find(d, 1 << 20, 1), find(d, 1 << 20, 2)) {
            let speedup = one.step_ns / two.step_ns;
            println!(
                "  6. 2 threads vs 1, {d} 1M: {speedup:.2}x (target >= 1.7) {}",
                verdict(speedup >= 1.7)
            );
        }
    }
    if let Some(path) = csv {
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("\nrows written to {path}");
    }
    if !ok {
        std::process::exit(1);
    }
}

/// One size of the hypergradient rule: its step, the reference rule's step
/// and the rule's roofline (its own traffic: 7 arrays against 5), in the same
/// rounds. Returns `(rule, reference, roofline)` in ns.
fn rule_row<A: Element>(s: &Settings, n: usize, threads: usize) -> (f64, f64, f64)
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (mut t1, g1, _) = inputs::<A>(n);
    let (mut t2, g2, _) = inputs::<A>(n);
    let (mut rt, rg, mut ra) = inputs::<A>(n);
    let mut rp = Array1::from(metasgd_kernels::testdata::values::<A>(n, 3, 0));
    // Factors whose product is 1: the rates neither drift nor saturate.
    let rule = metasgd::Rule::Hypergradient {
        up: A::from(2.0).unwrap(),
        down: A::from(0.5).unwrap(),
        smoothing: A::from(0.9).unwrap(),
    };
    let mut hyper = optimizer::<A>().with_rule(rule);
    let mut reference = optimizer::<A>();
    let kernel = kernels::auto(n);
    pool(threads).install(|| {
        let mut b = Interleaved::new();
        let h = b.add(|| hyper.step_inplace(t1.view_mut(), g1.view()).expect("step"));
        let r = b.add(|| {
            reference
                .step_inplace(t2.view_mut(), g2.view())
                .expect("step")
        });
        let roof = b.add(|| {
            let slice = "contiguous inputs";
            roofline_prev(
                kernel,
                rt.as_slice_mut().expect(slice),
                ra.as_slice_mut().expect(slice),
                rp.as_slice_mut().expect(slice),
                rg.as_slice().expect(slice),
            )
        });
        b.run(s.rounds, s.batch);
        (b.median_ns(h), b.median_ns(r), b.median_ns(roof))
    })
}

/// `7.` the hypergradient rule against its own roofline (>= 0.90 at 16M)
/// and against the reference rule (at most its traffic ratio, 7/5).
fn rule_rows(s: &Settings, out: &mut String) {
    let sizes: Vec<usize> = s.sizes.iter().copied().filter(|&n| n >= 1 << 20).collect();
    for &n in &sizes {
        for t in [1, 2] {
            progress(&format!("hypergradient rule {} on {t} thread(s)", label(n)));
            for (d, (rule, reference, roof)) in [
                ("f32", rule_row::<f32>(s, n, t)),
                ("f64", rule_row::<f64>(s, n, t)),
            ] {
                let (frac, ratio) = (roof / rule, rule / reference);
                let want = if n >= 1 << 24 { 0.90 } else { 0.85 };
                println!(
                    "  7. hypergradient rule {d} {} {t}T: {:.4} ns/elem, {frac:.3} of its roofline (target >= {want:.2}) {}, {ratio:.3}x the reference rule's time (target <= 1.40) {}",
                    label(n),
                    rule / n as f64,
                    verdict(frac >= want),
                    verdict(ratio <= 1.40)
                );
                let _ = writeln!(
                    out,
                    "rule_{d},{n},{t},{:.5},,{frac:.4},,{rule:.1},{roof:.1},{reference:.1},hypergradient",
                    rule / n as f64
                );
            }
        }
    }
}

/// In-cache sizes, one thread: `incache,<type>,<size>,<ns per element>` lines.
fn incache(quick: bool) {
    let s = Settings::new(quick);
    println!("simd level: {}", kernels::simd_level().name());
    pool(1).install(|| {
        for n in [4096usize, 8192, 16384, 32768] {
            let ns32 = incache_one::<f32>(&s, n);
            let ns64 = incache_one::<f64>(&s, n);
            println!("incache,f32,{n},{:.5}", ns32 / n as f64);
            println!("incache,f64,{n},{:.5}", ns64 / n as f64);
        }
    });
}

fn incache_one<A: Element>(s: &Settings, n: usize) -> f64
where
    MetaSGD<A>: Optimizer<A, metasgd::ndarray::Ix1>,
{
    let (mut theta, grad, _) = inputs::<A>(n);
    let mut opt = optimizer::<A>().with_backend(metasgd::Backend::Simd);
    let mut b = Interleaved::new();
    let i = b.add(|| {
        opt.step_inplace(theta.view_mut(), grad.view())
            .expect("step")
    });
    b.run(s.rounds, s.batch);
    b.median_ns(i)
}

/// Serial SIMD against the parallel kernel on 2 threads around the threshold:
/// the measurement behind `PAR_THRESHOLD`.
fn threshold(s: &Settings) {
    println!(
        "simd level: {}; parallel chunk = {} elements; current PAR_THRESHOLD = {}",
        kernels::simd_level().name(),
        kernels::par::PAR_CHUNK,
        kernels::PAR_THRESHOLD
    );
    println!(
        "{:<5} {:>7} {:>12} {:>12} {:>10}",
        "type", "size", "simd ns", "parallel ns", "par/simd"
    );
    pool(2).install(|| {
        for n in [
            8usize << 10,
            16 << 10,
            32 << 10,
            64 << 10,
            128 << 10,
            256 << 10,
            512 << 10,
        ] {
            let (mut t1, g1, _) = inputs::<f32>(n);
            let (mut t2, g2, _) = inputs::<f32>(n);
            let mut simd = optimizer::<f32>().with_backend(metasgd::Backend::Simd);
            let mut par = optimizer::<f32>().with_backend(metasgd::Backend::Parallel);
            let mut b = Interleaved::new();
            let i = b.add(|| simd.step_inplace(t1.view_mut(), g1.view()).expect("step"));
            let j = b.add(|| par.step_inplace(t2.view_mut(), g2.view()).expect("step"));
            b.run(s.rounds, s.batch);
            let (a, p) = (b.median_ns(i), b.median_ns(j));
            println!(
                "{:<5} {:>7} {:>12.0} {:>12.0} {:>10.3}",
                "f32",
                label(n),
                a,
                p,
                p / a
            );
        }
    });
}

/// The roofline against every simpler loop with its traffic, interleaved:
/// `roofline / loop` time above 1 means the loop beats the kernels' own
/// trivial loop (the table then uses that loop as the roofline).
fn roofline_vs_simple<A: Element>(s: &Settings, n: usize, threads: usize) {
    let (mut rt, rg, mut ra) = inputs::<A>(n);
    let simple = Simple::all();
    let mut bufs: Vec<_> = simple.iter().map(|_| inputs::<A>(n)).collect();
    let kernel = kernels::auto(n);
    let dtype = if size_of::<A>() == 4 { "f32" } else { "f64" };
    let (roof, others) = pool(threads).install(|| {
        let mut b = Interleaved::new();
        let roof = b.add(|| roofline_on(kernel, &mut rt, &mut ra, &rg));
        let ids: Vec<usize> = simple
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&k, (t, g, a))| b.add(move || simple_on(k, threads, t, a, g)))
            .collect();
        b.run(s.rounds, s.batch);
        let others: Vec<f64> = ids.iter().map(|&i| b.median_ns(i)).collect();
        (b.median_ns(roof), others)
    });
    let mut line = format!(
        "     {dtype} {:>4} {threads}T: roofline {:.4} ns/elem",
        label(n),
        roof / n as f64
    );
    for (k, ns) in simple.iter().zip(others) {
        let _ = write!(
            line,
            "; {} {:.4} ({:.3})",
            k.name(),
            ns / n as f64,
            roof / ns
        );
    }
    println!("{line}");
}

/// `kernel-compare roofline`: the roofline against simpler loops.
fn roofline_check(s: &Settings) {
    println!("simd level: {}", kernels::simd_level().name());
    println!(
        "roofline vs simpler loops with the same traffic (ns/elem; roofline time / loop time in parentheses, > 1 means the loop is faster)"
    );
    let big = *s.sizes.last().unwrap_or(&(1 << 20));
    for n in [1 << 20, big] {
        for threads in [1, 2] {
            roofline_vs_simple::<f32>(s, n, threads);
            roofline_vs_simple::<f64>(s, n, threads);
        }
    }
}
