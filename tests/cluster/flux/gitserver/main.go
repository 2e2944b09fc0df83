// Command gitserver serves the bare Git repositories under -root over Git's smart HTTP
// protocol on a loopback address, by running `git http-backend` as a CGI program (as a web
// server in front of Git does). Flux's GitRepository accepts only http, https and ssh URLs,
// and go-git does not speak the dumb HTTP protocol, so a plain file server would not do.
//
// Pushes are allowed without credentials (git http-backend accepts receive-pack when
// REMOTE_USER is set): the server listens on loopback only and serves the demo's and the
// tests' own repositories.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

func main() {
	root := flag.String("root", "", "folder holding the bare repositories (NAME.git)")
	addr := flag.String("addr", "127.0.0.1:0", "loopback address to listen on")
	flag.Parse()
	if *root == "" {
		log.Fatal("-root is required")
	}
	dir, err := filepath.Abs(*root)
	if err != nil {
		log.Fatalf("-root: %v", err)
	}
	git, err := exec.LookPath("git")
	if err != nil {
		log.Fatalf("git is not installed: %v", err)
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("-addr: %v", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("-addr %s: only a loopback address is allowed (pushes need no credentials)", *addr)
	}
	backend := &cgi.Handler{
		Path: git,
		Args: []string{"http-backend"},
		Env: []string{
			"GIT_PROJECT_ROOT=" + dir,
			"GIT_HTTP_EXPORT_ALL=1",
			"REMOTE_USER=homeplane",
			"HOME=" + os.Getenv("HOME"),
		},
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen on %s: %v", *addr, err)
	}
	log.Printf("serving %s on http://%s", dir, listener.Addr())
	server := &http.Server{
		Handler:           logged(backend),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(server.Serve(listener))
}

// logged logs one line per request: method, path, status and duration.
func logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Printf("%s %s %d %s", r.Method, r.URL.RequestURI(), rec.status, time.Since(start).Round(time.Millisecond))
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
