// forward: a TCP forwarder, so that pods on the real node reach the servers the tests start
// on the host's loopback (the API server, PostgreSQL, the S3 server, n8n) without those
// listening anywhere else and without NAT rules on the host.
//
//	forward LISTEN TARGET [LISTEN TARGET]...   e.g. forward 10.213.7.1:5432 127.0.0.1:5432
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: forward LISTEN TARGET [LISTEN TARGET]...")
		os.Exit(2)
	}
	var wg sync.WaitGroup
	for i := 0; i < len(args); i += 2 {
		listener, err := net.Listen("tcp", args[i])
		if err != nil {
			log.Fatalf("listen on %s: %v", args[i], err)
		}
		wg.Add(1)
		go func(l net.Listener, target string) {
			defer wg.Done()
			serve(l, target)
		}(listener, args[i+1])
	}
	log.Printf("forwarding %v", args)
	wg.Wait()
}

func serve(l net.Listener, target string) {
	for {
		conn, err := l.Accept()
		if err != nil {
			log.Printf("accept on %s: %v", l.Addr(), err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		go relay(conn, target)
	}
}

func relay(client net.Conn, target string) {
	defer client.Close()
	server, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		log.Printf("dial %s: %v", target, err)
		return
	}
	defer server.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Pass the half-close on, so that a client that ends its request is answered.
		if tcp, ok := dst.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}
