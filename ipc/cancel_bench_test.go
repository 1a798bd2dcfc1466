//go:build linux

package ipc

import (
	"encoding/binary"
	"fmt"
	"io"
	"testing"
)

// BenchmarkCancel: a Get on an empty queue and its cancel, by one rank,
// while another rank waits on 0 or 200,000 other queues. The cost does
// not grow with the other rank's queues: a cancel looks only at the queue
// its request waits on (it used to walk every queue, 21-25 ms with 200k).
func BenchmarkCancel(b *testing.B) {
	for _, others := range []int{0, 200_000} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			br := NewBroker(WithLimits(Limits{Pending: others + 1, Queues: others + 1}))
			defer br.Close()
			for r := range 2 {
				parent, child, err := Pair()
				if err != nil {
					b.Fatal(err)
				}
				go func() { _, _ = io.Copy(io.Discard, child); child.Close() }()
				defer parent.Close()
				if err := br.Attach(r, parent); err != nil {
					b.Fatal(err)
				}
				defer br.Detach(r, parent)
			}
			for i := range others {
				br.Handle(0, Frame{Type: FrameRequest, ID: uint64(i + 1), Payload: appendQueueRef([]byte{opGet}, queueRef{ID: uint64(i + 1)})})
			}
			get := appendQueueRef([]byte{opGet}, queueRef{ID: 1 << 40})
			b.ResetTimer()
			for i := range b.N {
				id := uint64(i + 1)
				br.Handle(1, Frame{Type: FrameRequest, ID: id, Payload: get})
				br.Handle(1, Frame{Type: FrameRequest, ID: 1 << 50, Payload: binary.LittleEndian.AppendUint64([]byte{opCancel}, id)})
			}
		})
	}
}
