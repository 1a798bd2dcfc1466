// Command datapar trains a linear regression by gradient descent, data
// parallel: the dataset is one shared buffer that every rank maps (no
// copies), each rank computes the gradient on its shard, and the gradients
// are averaged across ranks every step through ipc queues (an allreduce:
// rank 0 sums, everyone applies the same mean). The ranks end with
// bit-identical weights; the program prints them, the loss, and the
// speed-up of N ranks over one.
//
//	go run ./examples/datapar -ranks 2
package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"
	"unsafe"

	"github.com/mpspawn/mpspawn/ipc"
	"github.com/mpspawn/mpspawn/launcher/mp"
)

// dim is the number of features; the model has dim weights and a bias.
const dim = 32

// grad is one rank's gradient (or the mean of all ranks') for one step.
type grad struct {
	Rank int
	G    [dim + 1]float64
}

type job struct {
	Data  ipc.Handle // rows of dim features then the target, float64
	Rows  int
	Steps int
	LR    float64
	Sum   ipc.Queue[grad] // ranks → rank 0
	Mean  ipc.Queue[grad] // rank 0 → the other ranks
}

type result struct {
	W    [dim + 1]float64
	Loss float64
}

var train = mp.Register("train", func(ctx context.Context, r mp.Rank, j job) (result, error) {
	c := ipc.ClientFrom(ctx)
	m, err := c.Open(ctx, j.Data)
	if err != nil {
		return result{}, err
	}
	defer m.Close(ctx)
	data := unsafe.Slice((*float64)(unsafe.Pointer(&m.Bytes()[0])), j.Rows*(dim+1))
	lo, hi := r.Index*j.Rows/r.WorldSize, (r.Index+1)*j.Rows/r.WorldSize
	var w [dim + 1]float64
	for range j.Steps {
		g := gradient(data, lo, hi, &w)
		mean, err := allreduce(ctx, r, j, g)
		if err != nil {
			return result{}, err
		}
		for k := range w {
			w[k] -= j.LR * mean.G[k] / float64(j.Rows)
		}
	}
	return result{W: w, Loss: loss(data, 0, j.Rows, &w)}, nil
})

// gradient sums d(squared error)/dw over rows lo..hi-1.
func gradient(data []float64, lo, hi int, w *[dim + 1]float64) grad {
	var g grad
	for i := lo; i < hi; i++ {
		row := data[i*(dim+1) : (i+1)*(dim+1)]
		pred := w[dim]
		for k := range dim {
			pred += w[k] * row[k]
		}
		e := 2 * (pred - row[dim])
		for k := range dim {
			g.G[k] += e * row[k]
		}
		g.G[dim] += e
	}
	return g
}

func loss(data []float64, lo, hi int, w *[dim + 1]float64) float64 {
	s := 0.0
	for i := lo; i < hi; i++ {
		row := data[i*(dim+1) : (i+1)*(dim+1)]
		pred := w[dim]
		for k := range dim {
			pred += w[k] * row[k]
		}
		s += (pred - row[dim]) * (pred - row[dim])
	}
	return s / float64(hi-lo)
}

// allreduce sums every rank's gradient: rank 0 gathers them in rank order
// (so the sum is the same bits every run), then hands the sum to the rest.
func allreduce(ctx context.Context, r mp.Rank, j job, g grad) (grad, error) {
	if r.WorldSize == 1 {
		return g, nil
	}
	if r.Index != 0 {
		g.Rank = r.Index
		if err := j.Sum.Put(ctx, g); err != nil {
			return grad{}, err
		}
		return j.Mean.Get(ctx)
	}
	parts := make([]grad, r.WorldSize)
	parts[0] = g
	for range r.WorldSize - 1 {
		p, err := j.Sum.Get(ctx)
		if err != nil {
			return grad{}, err
		}
		parts[p.Rank] = p
	}
	var sum grad
	for _, p := range parts {
		for k := range sum.G {
			sum.G[k] += p.G[k]
		}
	}
	for range r.WorldSize - 1 {
		if err := j.Mean.Put(ctx, sum); err != nil {
			return grad{}, err
		}
	}
	return sum, nil
}

func main() {
	mp.Main()
	ranks := flag.Int("ranks", 2, "ranks")
	rows := flag.Int("rows", 200_000, "rows in the dataset")
	steps := flag.Int("steps", 100, "gradient steps")
	flag.Parse()

	broker := ipc.NewBroker()
	defer broker.Close()
	truth := make([]float64, dim+1)
	rng := rand.New(rand.NewPCG(1, 2))
	for k := range truth {
		truth[k] = rng.NormFloat64()
	}
	h, err := broker.NewHostBuffer(*rows*(dim+1)*8, func(b []byte) {
		data := unsafe.Slice((*float64)(unsafe.Pointer(&b[0])), *rows*(dim+1))
		for i := range *rows {
			row := data[i*(dim+1) : (i+1)*(dim+1)]
			y := truth[dim]
			for k := range dim {
				row[k] = rng.NormFloat64()
				y += truth[k] * row[k]
			}
			row[dim] = y + 0.01*rng.NormFloat64()
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	run := func(n int) ([]result, time.Duration) {
		j := job{Data: h, Rows: *rows, Steps: *steps, LR: 0.2, Sum: ipc.NewQueue[grad](0), Mean: ipc.NewQueue[grad](0)}
		start := time.Now()
		s, err := mp.Spawn(context.Background(), train, n, j, &mp.Options{Broker: broker})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		res, err := s.Join()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return res, time.Since(start)
	}
	one, t1 := run(1)
	many, tn := run(*ranks)
	for i, r := range many {
		if r.W != many[0].W {
			fmt.Fprintf(os.Stderr, "rank %d disagrees on the weights\n", i)
			os.Exit(1)
		}
	}
	maxErr := 0.0
	for k := range truth {
		maxErr = math.Max(maxErr, math.Abs(many[0].W[k]-truth[k]))
	}
	fmt.Printf("%d ranks agree on the weights; loss %.6f; largest error against the true weights %.4f\n", *ranks, many[0].Loss, maxErr)
	fmt.Printf("1 rank: loss %.6f in %v; %d ranks: %v; speed-up %.2fx\n", one[0].Loss, t1.Round(time.Millisecond), *ranks, tn.Round(time.Millisecond), t1.Seconds()/tn.Seconds())
	if err := broker.Release(h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
