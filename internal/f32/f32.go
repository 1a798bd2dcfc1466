// Package f32 is the float32 work of the 64 MiB hand-off benchmarks (in
// package ipc and bench/gobench): filling a buffer and reading all of it,
// with vector code as torch.full and Tensor.sum use on the other side.
package f32

import "unsafe"

// Of is b's memory as float32 values (b's length rounded down to 4 bytes).
func Of(b []byte) []float32 {
	if len(b) < 4 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), len(b)/4)
}

// Fill sets every element of fs to v: a short loop, then copies of what is
// filled (memmove, with vector stores), doubling up to a source that stays
// in cache, as bytes.Repeat does.
func Fill(fs []float32, v float32) {
	n := min(len(fs), 1024)
	for k := range fs[:n] {
		fs[k] = v
	}
	for n < len(fs) {
		n += copy(fs[n:], fs[:min(n, 64<<10)])
	}
}

// Sum adds fs up in eight independent lanes, so that the additions
// overlap as a vectorised sum's do.
func Sum(fs []float32) float64 {
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	for len(fs) >= 8 {
		v := (*[8]float32)(fs)
		s0, s1, s2, s3 = s0+v[0], s1+v[1], s2+v[2], s3+v[3]
		s4, s5, s6, s7 = s4+v[4], s5+v[5], s6+v[6], s7+v[7]
		fs = fs[8:]
	}
	for _, v := range fs {
		s0 += v
	}
	return float64(s0) + float64(s1) + float64(s2) + float64(s3) + float64(s4) + float64(s5) + float64(s6) + float64(s7)
}
