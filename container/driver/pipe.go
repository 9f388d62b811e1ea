package driver

import (
	"context"
	"errors"
	"io"
	"sync"
)

// progressInterval is how many archive bytes Pipe streams between two
// progress reports.
const progressInterval = 4 << 20

// Pipe streams the stopped container name from src's Export into dst's
// Import, named rename there if that is not empty, and returns the
// imported container. A failure on either side cancels the other; as
// Import guarantees, dst then keeps nothing. progress, if not nil,
// receives the running total of archive bytes dst has read, about every
// 4 MiB and, once dst has imported the container, the final total; it is
// called by one goroutine at a time, never after Pipe returns, and must
// not block for long.
//
// Pipe is how a caller relays a container between two servers, and how a
// server implements Pusher or Puller with a Transferer of its own and a
// remote one.
func Pipe(ctx context.Context, src Transferer, name string, dst Transferer, rename string, progress func(bytes int64)) (*Info, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	exported := make(chan error, 1)
	go func() {
		err := src.Export(ctx, name, pw)
		pw.CloseWithError(err) // nil closes cleanly: the importer sees EOF
		if err != nil {
			cancel()
		}
		exported <- err
	}()
	counter := &countingReader{r: pr, progress: progress}
	info, err := dst.Import(ctx, counter, rename)
	// The importer may hand the stream to a goroutine that outlives it.
	counter.stop(err == nil)
	pr.CloseWithError(errImportEnded) // unblock the exporter
	if err != nil {
		cancel()
	}
	exportErr := <-exported
	if errors.Is(exportErr, errImportEnded) || errors.Is(exportErr, context.Canceled) && err != nil {
		exportErr = nil // a consequence of the import's end, not a cause
	}
	if err := errors.Join(exportErr, err); err != nil {
		return nil, err
	}
	return info, nil
}

var errImportEnded = errors.New("the import ended before the export")

// countingReader reports the bytes read through it to progress, about
// every progressInterval bytes, until stop.
type countingReader struct {
	r io.Reader

	mu              sync.Mutex
	progress        func(int64) // nil once stopped
	total, reported int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += int64(n)
	if c.progress != nil && c.total-c.reported >= progressInterval {
		c.reported = c.total
		c.progress(c.total)
	}
	return n, err
}

// stop reports the total not reported yet if final, and prevents further
// progress calls. It returns once no progress call runs.
func (c *countingReader) stop(final bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if final && c.progress != nil && c.total != c.reported {
		c.progress(c.total)
	}
	c.progress = nil
}
