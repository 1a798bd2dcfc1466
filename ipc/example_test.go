//go:build linux

package ipc_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"

	"github.com/mpspawn/mpspawn/ipc"
)

// Two ranks share a buffer through a queue: rank 0 fills and publishes it,
// rank 1 opens the same memory, read-only. Here both "ranks" are clients
// in this process, served by a broker as the launcher serves its ranks; in
// a real job each rank's function gets its Client with ipc.ClientFrom(ctx).
func Example() {
	b := ipc.NewBroker()
	ctxs, done := ranks(b, 2)
	defer done()

	// Rank 0: fill a buffer and hand it over.
	ctx := ctxs[0]
	c := ipc.ClientFrom(ctx)
	buf, err := c.NewBuffer(5)
	if err != nil {
		log.Fatal(err)
	}
	copy(buf.Bytes(), "hello")
	h, err := buf.Publish(ctx) // sealed: nobody can write it any more
	if err != nil {
		log.Fatal(err)
	}
	q := ipc.NewQueue[ipc.Handle](0) // made once, given to both ranks
	if err := q.Put(ctx, h); err != nil {
		log.Fatal(err)
	}
	buf.Close(ctx) // the queue holds the buffer for the getter

	// Rank 1: take it and read it in place.
	ctx = ctxs[1]
	h, err = q.Get(ctx)
	if err != nil {
		log.Fatal(err)
	}
	m, err := ipc.ClientFrom(ctx).Open(ctx, h)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (%d bytes, from rank %d)\n", m.Bytes(), h.Size, h.Producer)
	m.Close(ctx) // the last holder: the buffer is freed
	// Output: hello (5 bytes, from rank 0)
}

// ranks attaches n clients in this process to b, as the launcher attaches
// its ranks, and returns each one's context; done ends them.
func ranks(b *ipc.Broker, n int) (ctxs []context.Context, done func()) {
	var served sync.WaitGroup
	var conns []*ipc.Conn
	for r := range n {
		parent, child, err := ipc.Pair()
		if err != nil {
			log.Fatal(err)
		}
		conn, err := ipc.FileConn(child)
		child.Close()
		if err != nil {
			log.Fatal(err)
		}
		served.Go(func() { b.Serve(r, parent, os.Getpid(), nil) })
		conns = append(conns, conn, parent)
		ctxs = append(ctxs, ipc.WithClient(context.Background(), ipc.NewClient(conn, r)))
	}
	return ctxs, func() {
		for _, c := range conns {
			c.Close()
		}
		served.Wait()
		b.Close()
	}
}
