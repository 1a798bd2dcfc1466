package launcher

import (
	"bufio"
	"errors"
	"io"
)

// maxLine is the longest line relayed in one piece; a longer line is
// relayed in pieces of this size.
const maxLine = 1 << 20

// relayBuffer is the relay's read buffer. Longer lines are gathered in
// pieces (see relayLines); a bigger buffer costs every rank's two relays
// its allocation and page faults up front, most of it never touched.
const relayBuffer = 4 << 10

// relayLines copies r to w one complete line per Write (the newline
// included) until r ends. A last line without a newline is written as is.
func relayLines(r io.Reader, w io.Writer) {
	br := bufio.NewReaderSize(r, relayBuffer)
	var long []byte
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			long = append(long, line...)
			if len(long) >= maxLine {
				_, _ = w.Write(long)
				long = long[:0]
			}
			continue
		case len(long) > 0:
			long = append(long, line...)
			line, long = long, long[:0]
		}
		if len(line) > 0 {
			_, _ = w.Write(line)
		}
		if err != nil {
			return
		}
	}
}
