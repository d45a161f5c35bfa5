//! A smooth background colour field: one quadratic polynomial in the
//! normalised pixel position per RGB channel, fitted by least squares.
//!
//! A quadratic is enough for what studio backdrops do (flat colour, a linear
//! sweep, a vignette that darkens the corners) and, unlike per-row
//! interpolation, it extends sensibly from the border samples into the middle
//! of the image. Positions are normalised to [-1, 1] so the same field can be
//! evaluated at the working resolution and at full resolution.

// Small dense linear algebra reads best with explicit row/column indices.
#![allow(clippy::needless_range_loop)]

/// Number of polynomial terms: 1, u, v, u², uv, v².
const TERMS: usize = 6;

/// Background colour as a function of position.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    coeffs: [[f64; TERMS]; 3],
}

/// Accumulates the normal equations of the least-squares fit.
pub(crate) struct Fitter {
    ata: [[f64; TERMS]; TERMS],
    atb: [[f64; TERMS]; 3],
    count: usize,
    width: f32,
    height: f32,
}

fn terms(u: f64, v: f64) -> [f64; TERMS] {
    [1.0, u, v, u * u, u * v, v * v]
}

fn normalise(x: f32, y: f32, width: f32, height: f32) -> (f64, f64) {
    (
        f64::from((x + 0.5) / width * 2.0 - 1.0),
        f64::from((y + 0.5) / height * 2.0 - 1.0),
    )
}

impl Fitter {
    pub(crate) fn new(width: u32, height: u32) -> Self {
        Fitter {
            ata: [[0.0; TERMS]; TERMS],
            atb: [[0.0; TERMS]; 3],
            count: 0,
            width: width as f32,
            height: height as f32,
        }
    }

    pub(crate) fn add(&mut self, x: u32, y: u32, rgb: [u8; 3]) {
        let (u, v) = normalise(x as f32, y as f32, self.width, self.height);
        let t = terms(u, v);
        for i in 0..TERMS {
            for j in i..TERMS {
                self.ata[i][j] += t[i] * t[j];
            }
            for c in 0..3 {
                self.atb[c][i] += t[i] * f64::from(rgb[c]);
            }
        }
        self.count += 1;
    }

    /// Solves the fit; `None` when the samples do not pin the field down
    /// (too few, or all on one line).
    pub(crate) fn solve(&self) -> Option<Field> {
        if self.count < TERMS * 4 {
            return None;
        }
        let mut a = self.ata;
        for i in 0..TERMS {
            for j in 0..i {
                a[i][j] = a[j][i];
            }
        }
        let mut coeffs = [[0.0; TERMS]; 3];
        for c in 0..3 {
            coeffs[c] = solve_linear(a, self.atb[c])?;
        }
        Some(Field { coeffs })
    }
}

/// Gaussian elimination with partial pivoting on a small dense system.
fn solve_linear(mut a: [[f64; TERMS]; TERMS], mut b: [f64; TERMS]) -> Option<[f64; TERMS]> {
    let scale = (0..TERMS).map(|i| a[i][i].abs()).fold(0.0, f64::max);
    for col in 0..TERMS {
        let pivot = (col..TERMS).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() <= scale * 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..TERMS {
            let f = a[row][col] / a[col][col];
            for k in col..TERMS {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; TERMS];
    for row in (0..TERMS).rev() {
        let tail: f64 = (row + 1..TERMS).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Some(x)
}

impl Field {
    /// Background colour at pixel (x, y) of an image of `width` x `height`
    /// (any resolution of the image the field was fitted on); the reference
    /// that [`Rows::at`] is checked against.
    #[cfg(test)]
    pub(crate) fn at(&self, x: u32, y: u32, width: u32, height: u32) -> [f32; 3] {
        // Normalised coordinates line pixel centres up across scales.
        let (u, v) = normalise(x as f32, y as f32, width as f32, height as f32);
        let t = terms(u, v);
        let mut out = [0.0; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let sum: f64 = self.coeffs[c].iter().zip(&t).map(|(k, t)| k * t).sum();
            *o = sum.clamp(0.0, 255.0) as f32;
        }
        out
    }
}

/// Colour distances of pixel `p` from background colour `b`.
///
/// `strict` is the plain Euclidean RGB distance. `shadowed` is the distance
/// from `p` to the segment of colours `s * b` for `s` in `[shadow_floor, 1]`:
/// a soft shadow on a backdrop darkens it without changing its hue, so a
/// shadowed pixel lies near that segment and counts as background.
#[inline]
pub(crate) fn distances(p: [f32; 3], b: [f32; 3], shadow_floor: f32) -> (f32, f32) {
    let d = [p[0] - b[0], p[1] - b[1], p[2] - b[2]];
    let strict = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    if shadow_floor >= 1.0 {
        return (strict, strict);
    }
    let bb = b[0] * b[0] + b[1] * b[1] + b[2] * b[2];
    if bb < 1.0 {
        return (strict, strict);
    }
    let s = ((p[0] * b[0] + p[1] * b[1] + p[2] * b[2]) / bb).clamp(shadow_floor, 1.0);
    let r = [p[0] - s * b[0], p[1] - s * b[1], p[2] - s * b[2]];
    let shadowed = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
    (strict, shadowed.min(strict))
}

/// A [`Field`] specialised to one image size: per row, each channel is
/// `a + u * (b + c * u)`, two multiply-adds per pixel instead of six terms.
pub(crate) struct Rows {
    rows: Vec<[[f32; 3]; 3]>,
    u0: f32,
    du: f32,
}

impl Rows {
    /// Background colour at (x, y).
    #[inline]
    pub(crate) fn at(&self, x: u32, y: u32) -> [f32; 3] {
        let [a, b, c] = self.rows[y as usize];
        let u = self.u0 + self.du * x as f32;
        let mut out = [0.0; 3];
        for (ch, o) in out.iter_mut().enumerate() {
            *o = (a[ch] + u * (b[ch] + c[ch] * u)).clamp(0.0, 255.0);
        }
        out
    }
}

impl Field {
    /// Precomputes the per-row form of the field for a `width` x `height`
    /// image.
    pub(crate) fn rows(&self, width: u32, height: u32) -> Rows {
        let rows = (0..height)
            .map(|y| {
                let (_, v) = normalise(0.0, y as f32, width as f32, height as f32);
                let mut abc = [[0.0f32; 3]; 3];
                for ch in 0..3 {
                    let k = &self.coeffs[ch];
                    abc[0][ch] = (k[0] + k[2] * v + k[5] * v * v) as f32;
                    abc[1][ch] = (k[1] + k[4] * v) as f32;
                    abc[2][ch] = k[3] as f32;
                }
                abc
            })
            .collect();
        let (u0, _) = normalise(0.0, 0.0, width as f32, height as f32);
        Rows {
            rows,
            u0: u0 as f32,
            du: 2.0 / width as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_quadratic_field() {
        let (w, h) = (64, 48);
        let truth = |x: u32, y: u32| {
            let (u, v) = normalise(x as f32, y as f32, w as f32, h as f32);
            [
                (200.0 + 20.0 * v - 15.0 * (u * u + v * v)) as u8,
                (180.0 - 10.0 * u) as u8,
                (100.0 + 5.0 * u * v) as u8,
            ]
        };
        let mut fit = Fitter::new(w, h);
        for y in 0..h {
            for x in [0, 1, w - 2, w - 1] {
                fit.add(x, y, truth(x, y));
            }
        }
        for x in 0..w {
            for y in [0, 1, h - 2, h - 1] {
                fit.add(x, y, truth(x, y));
            }
        }
        let field = fit.solve().unwrap();
        for (x, y) in [(32, 24), (10, 30), (50, 5)] {
            let got = field.at(x, y, w, h);
            let want = truth(x, y);
            for c in 0..3 {
                assert!(
                    (got[c] - f32::from(want[c])).abs() < 2.0,
                    "{x},{y} {got:?} {want:?}"
                );
            }
        }
    }

    #[test]
    fn shadow_distance_ignores_darkening_only() {
        let bg = [232.0, 120.0, 110.0];
        let shadow = [140.0, 72.0, 66.0];
        let red = [200.0, 20.0, 20.0];
        assert!(distances(shadow, bg, 0.5).1 < 3.0);
        assert!(distances(shadow, bg, 0.5).0 > 100.0);
        assert!(distances(red, bg, 0.5).1 > 50.0);
        assert_eq!(distances(shadow, bg, 1.0).1, distances(shadow, bg, 1.0).0);
    }
}
