// containerd's snapshotter conformance suite (snapshots/testsuite, from
// Debian's golang-github-containerd-containerd-dev) against containerd's
// own overlayfs snapshotter and against Kangaroo's remote snapshotter
// (`kangaroo node --shim-socket none`, reached through containerd's
// snapshots/proxy client over gRPC, as containerd reaches a proxy plugin).
// Run by scripts/snapshotter-suite.sh.
package suite

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestOverlayfs(t *testing.T) {
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		s, err := overlay.NewSnapshotter(root)
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil
	})
}

var counter int

func TestKangaroo(t *testing.T) {
	bin := os.Getenv("KANGAROO_BIN")
	if bin == "" {
		t.Fatal("KANGAROO_BIN is not set")
	}
	testsuite.SnapshotterSuite(t, "kangaroo", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		counter++
		// A short socket path (sun_path holds 108 bytes).
		sock := fmt.Sprintf("/tmp/kangaroo-suite-%d-%d.sock", os.Getpid(), counter)
		cmd := exec.Command(bin, "node", "--shim-socket", "none", "--snapshotter-socket", sock,
			"--root", filepath.Join(root, "data"), "--state", filepath.Join(root, "state"), "--log-level", "warning")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		for i := 0; i < 500; i++ {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		conn, err := grpc.Dial("unix://"+sock, grpc.WithInsecure())
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, nil, err
		}
		s := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "kangaroo")
		return s, func() error {
			conn.Close()
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			os.Remove(sock)
			return nil
		}, nil
	})
}
