package f32

import "testing"

func TestFillSum(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 1023, 1024, 1025, 100_000, 1 << 20} {
		b := make([]byte, 4*n+3) // a tail that is not a whole value
		fs := Of(b)
		if len(fs) != n {
			t.Fatalf("Of(%d bytes) has %d values; want %d", len(b), len(fs), n)
		}
		Fill(fs, 0.5)
		for i, v := range fs {
			if v != 0.5 {
				t.Fatalf("n=%d: fs[%d] = %v after Fill(0.5)", n, i, v)
			}
		}
		if b[len(b)-1] != 0 {
			t.Fatalf("n=%d: Fill wrote past the values", n)
		}
		if got := Sum(fs); got != float64(n)/2 {
			t.Errorf("n=%d: Sum = %v; want %v", n, got, float64(n)/2)
		}
	}
}
