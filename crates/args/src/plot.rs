//! `training_loss.png` (and `training_eval_loss.png`, ...) as LLaMA-Factory's `extras/ploting.py::plot_loss`
//! draws them with matplotlib: a 640x480 figure (6.4x4.8 in at 100 dpi), the raw curve in `#1f77b4` at alpha
//! 0.4 labelled "original", its EMA-smoothed curve (LLaMA-Factory's `smooth`) in `#1f77b4` labelled "smoothed",
//! title `training {key} of {output_dir}`, x label `step`, y label `{key}`, and a legend.
//!
//! Rendered by hand into an RGB raster (anti-aliased lines, a built-in 5x7 bitmap font) and written as PNG:
//! the chunks and CRC-32 are written here; deflate is miniz_oxide's (a 30x smaller file than stored blocks).

use crate::logging::{read_py_json, write_atomic, TRAINER_STATE_NAME};
use crate::value::Value;
use std::io;
use std::path::{Path, PathBuf};

/// LLaMA-Factory's `smooth`: a TensorBoard-style EMA whose weight grows with the number of points,
/// `w = 1.8 * (sigmoid(0.05 * n) - 0.5)`.
pub fn smooth(scalars: &[f64]) -> Vec<f64> {
    let Some(&first) = scalars.first() else {
        return Vec::new();
    };
    let weight = 1.8 * (1.0 / (1.0 + (-0.05 * scalars.len() as f64).exp()) - 0.5);
    let mut last = first;
    scalars
        .iter()
        .map(|&next| {
            let s = last * weight + (1.0 - weight) * next;
            last = s;
            s
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// PNG

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (ISO 3309 / PNG), table-driven.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit RGB PNG of `width x height` pixels (`rgb` row-major, 3 bytes a pixel).
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let row = width as usize * 3;
    let mut raw = Vec::with_capacity((row + 1) * height as usize);
    for y in 0..height as usize {
        raw.push(0); // filter: none
        raw.extend_from_slice(&rgb[y * row..(y + 1) * row]);
    }
    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, adaptive filtering, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------------------------------------------------
// Raster

/// An RGB image being drawn.
#[derive(Debug, Clone)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB.
    pub rgb: Vec<u8>,
}

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const TAB_BLUE: Rgb = [0x1f, 0x77, 0xb4];
const LEGEND_EDGE: Rgb = [204, 204, 204];

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![255; width * height * 3],
        }
    }

    fn blend(&mut self, x: i64, y: i64, c: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 || alpha <= 0.0 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        let a = alpha.min(1.0);
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(c.iter()) {
            let old = *dst as f32;
            *dst = (old + (src as f32 - old) * a).round() as u8;
        }
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb, alpha: f32) {
        for y in y0..y1 {
            for x in x0..x1 {
                self.blend(x, y, c, alpha);
            }
        }
    }

    fn rect_outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.fill_rect(x0, y0, x1, y0 + 1, c, 1.0);
        self.fill_rect(x0, y1 - 1, x1, y1, c, 1.0);
        self.fill_rect(x0, y0, x0 + 1, y1, c, 1.0);
        self.fill_rect(x1 - 1, y0, x1, y1, c, 1.0);
    }

    /// Strokes a polyline (anti-aliased, `width` px) clipped to `clip`, composited once so joints do not
    /// darken a translucent line.
    fn polyline(
        &mut self,
        pts: &[(f32, f32)],
        width: f32,
        c: Rgb,
        alpha: f32,
        clip: (i64, i64, i64, i64),
    ) {
        let (cx0, cy0, cx1, cy1) = clip;
        let (w, h) = ((cx1 - cx0).max(0) as usize, (cy1 - cy0).max(0) as usize);
        let mut cov = vec![0f32; w * h];
        let hw = width / 2.0;
        let mut segs: Vec<((f32, f32), (f32, f32))> =
            pts.windows(2).map(|p| (p[0], p[1])).collect();
        if pts.len() == 1 {
            segs.push((pts[0], pts[0]));
        }
        for ((ax, ay), (bx, by)) in segs {
            let minx = (ax.min(bx) - hw - 1.0).floor().max(cx0 as f32) as i64;
            let maxx = (ax.max(bx) + hw + 1.0).ceil().min(cx1 as f32 - 1.0) as i64;
            let miny = (ay.min(by) - hw - 1.0).floor().max(cy0 as f32) as i64;
            let maxy = (ay.max(by) + hw + 1.0).ceil().min(cy1 as f32 - 1.0) as i64;
            let (dx, dy) = (bx - ax, by - ay);
            let len2 = dx * dx + dy * dy;
            for y in miny..=maxy {
                for x in minx..=maxx {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let t = if len2 > 0.0 {
                        (((px - ax) * dx + (py - ay) * dy) / len2).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    let (qx, qy) = (ax + t * dx - px, ay + t * dy - py);
                    let d = (qx * qx + qy * qy).sqrt();
                    let v = (hw + 0.5 - d).clamp(0.0, 1.0);
                    let i = (y - cy0) as usize * w + (x - cx0) as usize;
                    if v > cov[i] {
                        cov[i] = v;
                    }
                }
            }
        }
        for y in 0..h {
            for x in 0..w {
                let v = cov[y * w + x];
                if v > 0.0 {
                    self.blend(cx0 + x as i64, cy0 + y as i64, c, v * alpha);
                }
            }
        }
    }

    /// Draws `text` with its top-left at (x, y), glyphs scaled by `scale`; returns the width drawn.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) -> i64 {
        let mut cx = x;
        for ch in text.chars() {
            let g = glyph(ch);
            for (col, bits) in g.iter().enumerate() {
                for row in 0..7 {
                    if bits >> row & 1 == 1 {
                        self.fill_rect(
                            cx + col as i64 * scale,
                            y + row * scale,
                            cx + (col as i64 + 1) * scale,
                            y + (row + 1) * scale,
                            c,
                            1.0,
                        );
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }

    /// Draws `text` rotated 90 degrees counter-clockwise (reading bottom to top), its bottom-left at (x, y).
    fn text_vertical(&mut self, x: i64, y: i64, text: &str, scale: i64, c: Rgb) {
        let mut cy = y;
        for ch in text.chars() {
            let g = glyph(ch);
            for (col, bits) in g.iter().enumerate() {
                for row in 0..7 {
                    if bits >> row & 1 == 1 {
                        let (px, py) = (x + row * scale, cy - (col as i64 + 1) * scale);
                        self.fill_rect(px, py, px + scale, py + scale, c, 1.0);
                    }
                }
            }
            cy -= 6 * scale;
        }
    }

    /// PNG bytes.
    pub fn to_png(&self) -> Vec<u8> {
        encode_png(self.width as u32, self.height as u32, &self.rgb)
    }
}

fn text_width(text: &str, scale: i64) -> i64 {
    text.chars().count() as i64 * 6 * scale - scale
}

/// The classic 5x7 font, ASCII 32..=126, five columns a glyph, bit 0 the top row.
static FONT: [[u8; 5]; 95] = [
    [0x00, 0x00, 0x00, 0x00, 0x00],
    [0x00, 0x00, 0x5F, 0x00, 0x00],
    [0x00, 0x07, 0x00, 0x07, 0x00],
    [0x14, 0x7F, 0x14, 0x7F, 0x14],
    [0x24, 0x2A, 0x7F, 0x2A, 0x12],
    [0x23, 0x13, 0x08, 0x64, 0x62],
    [0x36, 0x49, 0x55, 0x22, 0x50],
    [0x00, 0x05, 0x03, 0x00, 0x00],
    [0x00, 0x1C, 0x22, 0x41, 0x00],
    [0x00, 0x41, 0x22, 0x1C, 0x00],
    [0x08, 0x2A, 0x1C, 0x2A, 0x08],
    [0x08, 0x08, 0x3E, 0x08, 0x08],
    [0x00, 0x50, 0x30, 0x00, 0x00],
    [0x08, 0x08, 0x08, 0x08, 0x08],
    [0x00, 0x60, 0x60, 0x00, 0x00],
    [0x20, 0x10, 0x08, 0x04, 0x02],
    [0x3E, 0x51, 0x49, 0x45, 0x3E],
    [0x00, 0x42, 0x7F, 0x40, 0x00],
    [0x42, 0x61, 0x51, 0x49, 0x46],
    [0x21, 0x41, 0x45, 0x4B, 0x31],
    [0x18, 0x14, 0x12, 0x7F, 0x10],
    [0x27, 0x45, 0x45, 0x45, 0x39],
    [0x3C, 0x4A, 0x49, 0x49, 0x30],
    [0x01, 0x71, 0x09, 0x05, 0x03],
    [0x36, 0x49, 0x49, 0x49, 0x36],
    [0x06, 0x49, 0x49, 0x29, 0x1E],
    [0x00, 0x36, 0x36, 0x00, 0x00],
    [0x00, 0x56, 0x36, 0x00, 0x00],
    [0x08, 0x14, 0x22, 0x41, 0x00],
    [0x14, 0x14, 0x14, 0x14, 0x14],
    [0x00, 0x41, 0x22, 0x14, 0x08],
    [0x02, 0x01, 0x51, 0x09, 0x06],
    [0x32, 0x49, 0x79, 0x41, 0x3E],
    [0x7E, 0x11, 0x11, 0x11, 0x7E],
    [0x7F, 0x49, 0x49, 0x49, 0x36],
    [0x3E, 0x41, 0x41, 0x41, 0x22],
    [0x7F, 0x41, 0x41, 0x22, 0x1C],
    [0x7F, 0x49, 0x49, 0x49, 0x41],
    [0x7F, 0x09, 0x09, 0x09, 0x01],
    [0x3E, 0x41, 0x49, 0x49, 0x7A],
    [0x7F, 0x08, 0x08, 0x08, 0x7F],
    [0x00, 0x41, 0x7F, 0x41, 0x00],
    [0x20, 0x40, 0x41, 0x3F, 0x01],
    [0x7F, 0x08, 0x14, 0x22, 0x41],
    [0x7F, 0x40, 0x40, 0x40, 0x40],
    [0x7F, 0x02, 0x0C, 0x02, 0x7F],
    [0x7F, 0x04, 0x08, 0x10, 0x7F],
    [0x3E, 0x41, 0x41, 0x41, 0x3E],
    [0x7F, 0x09, 0x09, 0x09, 0x06],
    [0x3E, 0x41, 0x51, 0x21, 0x5E],
    [0x7F, 0x09, 0x19, 0x29, 0x46],
    [0x46, 0x49, 0x49, 0x49, 0x31],
    [0x01, 0x01, 0x7F, 0x01, 0x01],
    [0x3F, 0x40, 0x40, 0x40, 0x3F],
    [0x1F, 0x20, 0x40, 0x20, 0x1F],
    [0x3F, 0x40, 0x38, 0x40, 0x3F],
    [0x63, 0x14, 0x08, 0x14, 0x63],
    [0x07, 0x08, 0x70, 0x08, 0x07],
    [0x61, 0x51, 0x49, 0x45, 0x43],
    [0x00, 0x7F, 0x41, 0x41, 0x00],
    [0x02, 0x04, 0x08, 0x10, 0x20],
    [0x00, 0x41, 0x41, 0x7F, 0x00],
    [0x04, 0x02, 0x01, 0x02, 0x04],
    [0x40, 0x40, 0x40, 0x40, 0x40],
    [0x00, 0x01, 0x02, 0x04, 0x00],
    [0x20, 0x54, 0x54, 0x54, 0x78],
    [0x7F, 0x48, 0x44, 0x44, 0x38],
    [0x38, 0x44, 0x44, 0x44, 0x20],
    [0x38, 0x44, 0x44, 0x48, 0x7F],
    [0x38, 0x54, 0x54, 0x54, 0x18],
    [0x08, 0x7E, 0x09, 0x01, 0x02],
    [0x0C, 0x52, 0x52, 0x52, 0x3E],
    [0x7F, 0x08, 0x04, 0x04, 0x78],
    [0x00, 0x44, 0x7D, 0x40, 0x00],
    [0x20, 0x40, 0x44, 0x3D, 0x00],
    [0x7F, 0x10, 0x28, 0x44, 0x00],
    [0x00, 0x41, 0x7F, 0x40, 0x00],
    [0x7C, 0x04, 0x18, 0x04, 0x78],
    [0x7C, 0x08, 0x04, 0x04, 0x78],
    [0x38, 0x44, 0x44, 0x44, 0x38],
    [0x7C, 0x14, 0x14, 0x14, 0x08],
    [0x08, 0x14, 0x14, 0x18, 0x7C],
    [0x7C, 0x08, 0x04, 0x04, 0x08],
    [0x48, 0x54, 0x54, 0x54, 0x20],
    [0x04, 0x3F, 0x44, 0x40, 0x20],
    [0x3C, 0x40, 0x40, 0x20, 0x7C],
    [0x1C, 0x20, 0x40, 0x20, 0x1C],
    [0x3C, 0x40, 0x30, 0x40, 0x3C],
    [0x44, 0x28, 0x10, 0x28, 0x44],
    [0x0C, 0x50, 0x50, 0x50, 0x3C],
    [0x44, 0x64, 0x54, 0x4C, 0x44],
    [0x00, 0x08, 0x36, 0x41, 0x00],
    [0x00, 0x00, 0x7F, 0x00, 0x00],
    [0x00, 0x41, 0x36, 0x08, 0x00],
    [0x08, 0x04, 0x08, 0x10, 0x08],
];

fn glyph(c: char) -> &'static [u8; 5] {
    let i = c as u32;
    if (32..=126).contains(&i) {
        &FONT[(i - 32) as usize]
    } else {
        &FONT[('?' as u32 - 32) as usize]
    }
}

// ---------------------------------------------------------------------------------------------------------
// The loss figure

/// Tick positions in [lo, hi] at a 1/2/2.5/5 x 10^k step, at most about 8 of them (matplotlib's MaxNLocator),
/// and the decimals their labels need.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 || !span.is_finite() {
        return (vec![lo], 0);
    }
    let raw = span / 7.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks: Vec<f64> = (first..=last).map(|k| k as f64 * step).collect();
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / 10f64.powi(-(decimals as i32)) - 2.5).abs() < 1e-9 {
        decimals += 1;
    }
    (ticks, decimals)
}

fn tick_label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// matplotlib's default data limits: the data range plus 5% margins on each side.
fn limits(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (-0.055, 0.055);
    }
    if hi - lo == 0.0 {
        let pad = if lo == 0.0 { 0.05 } else { lo.abs() * 0.05 };
        return (lo - pad, hi + pad);
    }
    let m = (hi - lo) * 0.05;
    (lo - m, hi + m)
}

/// Draws the figure LLaMA-Factory's `plot_loss` saves for one key.
pub fn render_loss_figure(steps: &[f64], values: &[f64], title: &str, ylabel: &str) -> Canvas {
    let (w, h) = (640usize, 480usize);
    let mut cv = Canvas::new(w, h);
    // matplotlib's default subplot box: left 0.125, right 0.9, bottom 0.11, top 0.88.
    let (ax0, ax1, ay0, ay1) = (80i64, 576i64, 58i64, 427i64);
    let n = steps.len().min(values.len());
    let (steps, values) = (&steps[..n], &values[..n]);
    let smoothed = smooth(values);
    let (x_lo, x_hi) = limits(steps.iter().copied());
    let (y_lo, y_hi) = limits(values.iter().chain(smoothed.iter()).copied());
    let to_px = |x: f64, y: f64| -> (f32, f32) {
        let px = ax0 as f64 + (x - x_lo) / (x_hi - x_lo) * (ax1 - ax0) as f64;
        let py = ay1 as f64 - (y - y_lo) / (y_hi - y_lo) * (ay1 - ay0) as f64;
        (px as f32, py as f32)
    };
    let clip = (ax0, ay0, ax1, ay1);
    let finite = |pts: Vec<(f64, f64)>| -> Vec<(f32, f32)> {
        pts.into_iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| to_px(x, y))
            .collect()
    };
    let raw_px = finite(steps.iter().copied().zip(values.iter().copied()).collect());
    let smooth_px = finite(
        steps
            .iter()
            .copied()
            .zip(smoothed.iter().copied())
            .collect(),
    );
    let lw = 1.5 * 100.0 / 72.0; // 1.5 pt at 100 dpi
    cv.polyline(&raw_px, lw, TAB_BLUE, 0.4, clip);
    cv.polyline(&smooth_px, lw, TAB_BLUE, 1.0, clip);

    // Spines and ticks (outward, 3.5 pt).
    cv.rect_outline(ax0 - 1, ay0 - 1, ax1 + 1, ay1 + 1, BLACK);
    let scale = 2;
    let (xt, xd) = nice_ticks(x_lo, x_hi);
    for t in xt {
        let (px, _) = to_px(t, y_lo);
        let px = px.round() as i64;
        cv.fill_rect(px, ay1 + 1, px + 1, ay1 + 6, BLACK, 1.0);
        let label = tick_label(t, xd);
        cv.text(
            px - text_width(&label, scale) / 2,
            ay1 + 9,
            &label,
            scale,
            BLACK,
        );
    }
    let (yt, yd) = nice_ticks(y_lo, y_hi);
    let mut widest = 0;
    for t in yt {
        let (_, py) = to_px(x_lo, t);
        let py = py.round() as i64;
        cv.fill_rect(ax0 - 6, py, ax0 - 1, py + 1, BLACK, 1.0);
        let label = tick_label(t, yd);
        let tw = text_width(&label, scale);
        widest = widest.max(tw);
        cv.text(ax0 - 9 - tw, py - 7, &label, scale, BLACK);
    }

    // Labels and title.
    cv.text(
        (ax0 + ax1) / 2 - text_width("step", scale) / 2,
        ay1 + 30,
        "step",
        scale,
        BLACK,
    );
    let ylabel_h = text_width(ylabel, scale);
    cv.text_vertical(
        (ax0 - 9 - widest - 20).max(2),
        (ay0 + ay1) / 2 + ylabel_h / 2,
        ylabel,
        scale,
        BLACK,
    );
    let max_chars = ((w as i64 - 16) / (6 * scale)) as usize;
    let title: String = if title.chars().count() > max_chars {
        let tail: String = title
            .chars()
            .rev()
            .take(max_chars.saturating_sub(3))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("...{tail}")
    } else {
        title.to_string()
    };
    cv.text(
        w as i64 / 2 - text_width(&title, scale) / 2,
        ay0 - 24,
        &title,
        scale,
        BLACK,
    );

    // Legend ("best" location: the corner covering the fewest points).
    let entries = ["original", "smoothed"];
    let lw_px = entries
        .iter()
        .map(|e| text_width(e, scale))
        .max()
        .unwrap_or(0);
    let (bw, bh) = (10 + 28 + 8 + lw_px + 10, 8 + 2 * 20 + 4);
    let corners = [
        (ax1 - 8 - bw, ay0 + 8),
        (ax0 + 8, ay0 + 8),
        (ax0 + 8, ay1 - 8 - bh),
        (ax1 - 8 - bw, ay1 - 8 - bh),
    ];
    let covered = |(bx, by): (i64, i64)| {
        raw_px
            .iter()
            .chain(smooth_px.iter())
            .filter(|(x, y)| {
                (*x as i64) >= bx
                    && (*x as i64) <= bx + bw
                    && (*y as i64) >= by
                    && (*y as i64) <= by + bh
            })
            .count()
    };
    let (bx, by) = corners
        .iter()
        .copied()
        .min_by_key(|c| covered(*c))
        .unwrap_or(corners[0]);
    cv.fill_rect(bx, by, bx + bw, by + bh, WHITE, 0.8);
    cv.rect_outline(bx, by, bx + bw, by + bh, LEGEND_EDGE);
    for (i, (label, alpha)) in entries.iter().zip([0.4f32, 1.0]).enumerate() {
        let cy = by + 8 + i as i64 * 20 + 7;
        let seg = [
            ((bx + 10) as f32, cy as f32 + 0.5),
            ((bx + 38) as f32, cy as f32 + 0.5),
        ];
        cv.polyline(&seg, lw, TAB_BLUE, alpha, (bx, by, bx + bw, by + bh));
        cv.text(bx + 46, cy - 7, label, scale, BLACK);
    }
    cv
}

/// LLaMA-Factory's `plot_loss(save_dictionary, keys)`: for each key found in `trainer_state.json`'s
/// `log_history`, writes `training_{key}.png` (`/` in the key becomes `_`). Returns the files written and
/// one message per key that had nothing to plot ("No metric {key} to plot.").
pub fn plot_loss(output_dir: &Path, keys: &[&str]) -> io::Result<(Vec<PathBuf>, Vec<String>)> {
    let path = output_dir.join(TRAINER_STATE_NAME);
    let text = std::fs::read_to_string(&path)?;
    let state = read_py_json(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    let history: Vec<&Vec<(String, Value)>> = match &state {
        Value::Map(top) => match top.iter().find(|(k, _)| k == "log_history") {
            Some((_, Value::List(items))) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Map(m) => Some(m),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let num = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for key in keys {
        let mut steps = Vec::new();
        let mut metrics = Vec::new();
        for entry in &history {
            let Some(v) = entry
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| num(v))
            else {
                continue;
            };
            let step = entry
                .iter()
                .find(|(k, _)| k == "step")
                .and_then(|(_, v)| num(v))
                .unwrap_or(0.0);
            steps.push(step);
            metrics.push(v);
        }
        if metrics.is_empty() {
            skipped.push(format!("No metric {key} to plot."));
            continue;
        }
        let title = format!("training {key} of {}", output_dir.display());
        let fig = render_loss_figure(&steps, &metrics, &title, key);
        let file = output_dir.join(format!("training_{}.png", key.replace('/', "_")));
        write_atomic(&file, &fig.to_png())?;
        written.push(file);
    }
    Ok((written, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::TrainerState;

    #[test]
    fn smoothing_matches_llamafactory() {
        // LLaMA-Factory's smooth([3.0, 2.0, 1.5, 1.2, 1.0]) in Python.
        let want = [
            3.0,
            2.111917701594437,
            1.5684844227273995,
            1.2412399296650032,
            1.0269990184609108,
        ];
        let got = smooth(&[3.0, 2.0, 1.5, 1.2, 1.0]);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        assert!(smooth(&[]).is_empty());
    }

    /// Bitwise CRC-32, independent of the table the encoder uses.
    fn crc_bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    /// Walks the chunks, checks every CRC, and returns (width, height, decoded RGB).
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut i = 8;
        let (mut w, mut h, mut idat, mut kinds) = (0, 0, Vec::new(), Vec::new());
        while i < png.len() {
            let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
            let kind = &png[i + 4..i + 8];
            let data = &png[i + 8..i + 8 + len];
            let crc = u32::from_be_bytes(png[i + 8 + len..i + 12 + len].try_into().unwrap());
            assert_eq!(
                crc,
                crc_bitwise(&png[i + 4..i + 8 + len]),
                "CRC of {}",
                String::from_utf8_lossy(kind)
            );
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            i += 12 + len;
        }
        assert_eq!(kinds.first().map(String::as_str), Some("IHDR"));
        assert_eq!(kinds.last().map(String::as_str), Some("IEND"));
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("zlib stream");
        let row = w as usize * 3;
        assert_eq!(raw.len(), (row + 1) * h as usize);
        let mut rgb = Vec::new();
        for y in 0..h as usize {
            assert_eq!(raw[y * (row + 1)], 0, "filter byte");
            rgb.extend_from_slice(&raw[y * (row + 1) + 1..(y + 1) * (row + 1)]);
        }
        (w, h, rgb)
    }

    #[test]
    fn png_round_trips() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(crc32(b"123456789"), crc_bitwise(b"123456789"));
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let (w, h, back) = decode(&encode_png(5, 3, &rgb));
        assert_eq!((w, h), (5, 3));
        assert_eq!(back, rgb);
    }

    #[test]
    fn loss_plot_from_trainer_state() {
        let d = std::env::temp_dir().join(format!("ferrotune-plot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut st = TrainerState::default();
        for step in 1..=120u64 {
            st.global_step = step;
            st.epoch = step as f64 / 40.0;
            let noise = ((step * 7919) % 13) as f64 / 13.0 - 0.5;
            let loss = 2.5 * (-(step as f64) / 40.0).exp() + 0.6 + 0.25 * noise;
            st.log(vec![
                ("loss".into(), Value::Float(loss)),
                ("learning_rate".into(), Value::Float(1e-4)),
            ]);
            if step % 30 == 0 {
                st.log(vec![("eval_loss".into(), Value::Float(loss + 0.1))]);
            }
        }
        st.save(&d).unwrap();
        let (written, skipped) = plot_loss(&d, &["loss", "eval_loss", "eval_accuracy"]).unwrap();
        assert_eq!(
            written,
            vec![
                d.join("training_loss.png"),
                d.join("training_eval_loss.png")
            ]
        );
        assert_eq!(
            skipped,
            vec!["No metric eval_accuracy to plot.".to_string()]
        );
        let png = std::fs::read(d.join("training_loss.png")).unwrap();
        assert!(png.len() < 60_000, "compressed: {} bytes", png.len());
        let (w, h, rgb) = decode(&png);
        assert_eq!((w, h), (640, 480));
        let px = |x: usize, y: usize| {
            [
                rgb[(y * 640 + x) * 3],
                rgb[(y * 640 + x) * 3 + 1],
                rgb[(y * 640 + x) * 3 + 2],
            ]
        };
        assert_eq!(px(2, 2), [255, 255, 255], "white background");
        assert_eq!(px(79, 200), [0, 0, 0], "left spine");
        let solid = rgb.chunks(3).filter(|p| p == &[0x1f, 0x77, 0xb4]).count();
        let faded = rgb
            .chunks(3)
            .filter(|p| p[2] > 200 && p[0] > 130 && p[0] < 190 && p[1] > 180 && p[1] < 215)
            .count();
        assert!(solid > 300, "smoothed curve drawn in #1f77b4 ({solid} px)");
        assert!(faded > 300, "raw curve drawn at alpha 0.4 ({faded} px)");
        // Same state, same bytes.
        let again = render_loss_figure(&[1.0, 2.0], &[1.0, 0.5], "t", "loss").to_png();
        assert_eq!(
            again,
            render_loss_figure(&[1.0, 2.0], &[1.0, 0.5], "t", "loss").to_png()
        );
    }

    #[test]
    fn ticks_are_round_numbers() {
        let (t, d) = nice_ticks(-5.95, 125.95);
        assert_eq!(t, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]);
        assert_eq!(d, 0);
        let (t, d) = nice_ticks(0.43, 3.2);
        assert_eq!(t.first().copied(), Some(0.5));
        assert_eq!(d, 1);
        assert_eq!(tick_label(0.25, 2), "0.25");
        assert_eq!(tick_label(-0.0, 1), "0.0");
        let (t, _) = nice_ticks(1.0, 1.0);
        assert_eq!(t, vec![1.0]);
    }
}
