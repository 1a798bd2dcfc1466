package codec

import (
	"errors"
	"reflect"
	"testing"
)

type plainPoint struct {
	X, Y float64
	Tag  [4]byte
	OK   bool
}

type namedPoint struct {
	Name string
	P    plainPoint
}

// roundTrip encodes s after off bytes of prefix and decodes it back, at
// the encoded offset (aligned, used in place) and one byte further (copied).
func roundTrip[T any](t *testing.T, s []T, off int) {
	t.Helper()
	enc, err := AppendSlice(make([]byte, off), s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeSlice[T](enc[off:])
	if err != nil || !reflect.DeepEqual(got, s) && !(len(got) == 0 && len(s) == 0) {
		t.Errorf("decodeSlice(AppendSlice(%v)) = %v, %v", s, got, err)
	}
	shifted := append([]byte{0}, enc[off:]...)
	if got, err := DecodeSlice[T](shifted[1:]); err != nil || !reflect.DeepEqual(got, s) && !(len(got) == 0 && len(s) == 0) {
		t.Errorf("decodeSlice(shifted) = %v, %v; want %v", got, err, s)
	}
}

func TestSliceCodec(t *testing.T) {
	for off := range 9 {
		roundTrip(t, []int{1, -2, 3 << 40}, off)
		roundTrip(t, []float32{1.5, -2}, off)
		roundTrip(t, []plainPoint{{1, 2, [4]byte{'a'}, true}, {3, 4, [4]byte{}, false}}, off)
		roundTrip(t, []struct{}{{}, {}, {}}, off)
		roundTrip(t, []int{}, off)
		roundTrip(t, []string{"a", "", "ccc"}, off)
		roundTrip(t, []namedPoint{{"p", plainPoint{X: 1}}}, off)
	}
	tests := []struct {
		typ   reflect.Type
		plain bool
	}{
		{reflect.TypeFor[int](), true},
		{reflect.TypeFor[[3]uint8](), true},
		{reflect.TypeFor[plainPoint](), true},
		{reflect.TypeFor[string](), false},
		{reflect.TypeFor[*int](), false},
		{reflect.TypeFor[[]int](), false},
		{reflect.TypeFor[namedPoint](), false},
		{reflect.TypeFor[map[int]int](), false},
		{reflect.TypeFor[uintptr](), false},
	}
	for _, tt := range tests {
		if got := IsPlain(tt.typ); got != tt.plain {
			t.Errorf("IsPlain(%v) = %v; want %v", tt.typ, got, tt.plain)
		}
	}
}

// TestSliceCodecBad: truncated, padded-past-the-end and mis-sized
// encodings are errors, never a panic or an out-of-bounds view.
func TestSliceCodecBad(t *testing.T) {
	good, _ := AppendSlice(nil, []int64{1, 2, 3})
	for _, b := range [][]byte{
		nil,
		{sliceRaw},
		{sliceRaw, 3},
		{sliceRaw, 3, 200},
		good[:len(good)-1],
		append(append([]byte{}, good...), 0),
		{2, 0, 0},
		{sliceRaw, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0},
	} {
		if _, err := DecodeSlice[int64](b); !errors.Is(err, errBadSlice) {
			t.Errorf("decodeSlice(%v) = %v; want errBadSlice", b, err)
		}
	}
	if _, err := DecodeSlice[string](good); !errors.Is(err, errBadSlice) {
		t.Errorf("DecodeSlice[string](raw ints) = %v; want errBadSlice", err)
	}
}
