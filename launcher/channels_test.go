//go:build linux

package launcher

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/ipc"
)

// TestChannelWrongPeerStopsTheJob: a frame on a rank's control channel
// written by another process (here the rank's child) stops the job, and
// the cause names the rank, its pid and the pid that wrote.
func TestChannelWrongPeerStopsTheJob(t *testing.T) {
	specs := []Spec{helperSpec(0, "peer-liar")}
	broker := ipc.NewBroker()
	defer broker.Close()
	chans, err := AddChannels(broker, specs)
	if err != nil {
		t.Fatal(err)
	}
	g, err := Start(context.Background(), specs, Options{GracePeriod: time.Second})
	if err != nil {
		chans.Close()
		t.Fatal(err)
	}
	chans.Serve(g, nil)
	res := waitResult(t, g)
	chans.Close()
	var pe *ipc.PeerError
	if !errors.As(res.Cause, &pe) || pe.Rank != 0 || pe.Want != res.Ranks[0].Pid || pe.Got == pe.Want || pe.Got <= 0 {
		t.Fatalf("Result.Cause = %v; want an *ipc.PeerError for rank 0 (pid %d) naming another pid", res.Cause, res.Ranks[0].Pid)
	}
	if !res.Ranks[0].Stopped {
		t.Error("the rank was not stopped")
	}
}
