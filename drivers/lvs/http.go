package lvs

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/musterkit/muster/lb/driver"
)

// httpCheck sends GET hc.Path on c and reports whether the answer has
// hc.ExpectStatus (any 2xx or 3xx when it is 0).
func httpCheck(c net.Conn, hc *driver.HealthCheck, host string) bool {
	c.SetDeadline(time.Now().Add(hc.Timeout))
	path := hc.Path
	if path == "" {
		path = "/"
	}
	// Path and host passed Config.Validate: no spaces or line breaks.
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: muster-lvs-check\r\n\r\n", path, host); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	if hc.ExpectStatus != 0 {
		return resp.StatusCode == hc.ExpectStatus
	}
	return resp.StatusCode >= 200 && resp.StatusCode < 400
}
