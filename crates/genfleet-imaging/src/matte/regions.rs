//! Connected regions on a pixel grid: flood fill from the image border and
//! a visitor over connected components. Plain iterative scans with an
//! explicit stack, so deep regions cannot overflow the call stack.

/// Marks every pixel reachable from the image border through pixels where
/// `passable` is true (4-connected, so a one pixel diagonal gap in an outline
/// does not let the background leak inside).
pub(crate) fn flood_from_border(width: usize, height: usize, passable: &[bool]) -> Vec<bool> {
    let mut reached = vec![false; width * height];
    let mut stack = Vec::new();
    let seed = |i: usize, reached: &mut Vec<bool>, stack: &mut Vec<usize>| {
        if passable[i] && !reached[i] {
            reached[i] = true;
            stack.push(i);
        }
    };
    for x in 0..width {
        seed(x, &mut reached, &mut stack);
        seed((height - 1) * width + x, &mut reached, &mut stack);
    }
    for y in 0..height {
        seed(y * width, &mut reached, &mut stack);
        seed(y * width + width - 1, &mut reached, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % width, i / width);
        let mut visit = |j: usize| {
            if passable[j] && !reached[j] {
                reached[j] = true;
                stack.push(j);
            }
        };
        if x > 0 {
            visit(i - 1);
        }
        if x + 1 < width {
            visit(i + 1);
        }
        if y > 0 {
            visit(i - width);
        }
        if y + 1 < height {
            visit(i + width);
        }
    }
    reached
}

/// Calls `visit` once per 8-connected component of pixels where `member` is
/// true, with the component's pixel indices.
pub(crate) fn for_each_component(
    width: usize,
    height: usize,
    member: &[bool],
    mut visit: impl FnMut(&[usize]),
) {
    let mut seen = vec![false; width * height];
    let mut stack = Vec::new();
    let mut pixels = Vec::new();
    for start in 0..width * height {
        if !member[start] || seen[start] {
            continue;
        }
        pixels.clear();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % width, i / width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let j = ny * width + nx;
                    if member[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        visit(&pixels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (usize, usize, Vec<bool>) {
        let h = rows.len();
        let w = rows[0].len();
        let cells = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| b == b'.'))
            .collect();
        (w, h, cells)
    }

    #[test]
    fn flood_stops_at_outlines_and_diagonal_gaps() {
        let (w, h, passable) = grid(&[".....", ".###.", ".#.#.", ".##..", "....."]);
        let reached = flood_from_border(w, h, &passable);
        // The centre touches the outside only diagonally, through (3, 3).
        assert!(!reached[2 * w + 2]);
        assert!(reached[0] && reached[3 * w + 3]);
    }

    #[test]
    fn components_are_eight_connected() {
        let (w, h, member) = grid(&["..##", "#..#", "###."]);
        let mut sizes = Vec::new();
        for_each_component(w, h, &member, |p| sizes.push(p.len()));
        sizes.sort();
        assert_eq!(sizes, vec![5]);
    }
}
