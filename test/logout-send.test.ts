/**
 * The back-channel logout POST against a real HTTP server on loopback: delivered normally, and
 * refused before any byte is sent when only public addresses are allowed (clients that registered
 * themselves, in production), whether the URI names the address or a host name resolving to it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { DeliveryFailure, isInternalAddress, postLogoutToken } from '../src/logout/send.ts';

let server: http.Server;
let port: number;
const received: string[] = [];

beforeAll(async () => {
  server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      received.push(body);
      response.writeHead(request.url === '/fails' ? 500 : 200).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

test('posts the token form-encoded and accepts a 2xx; a 500 is a failure', async () => {
  await postLogoutToken(`http://127.0.0.1:${port}/logout`, 'header.payload.sig', 2000);
  expect(received.pop()).toBe('logout_token=header.payload.sig');
  await expect(postLogoutToken(`http://127.0.0.1:${port}/fails`, 't', 2000)).rejects.toThrow('answered 500');
});

test('publicOnly refuses internal addresses, by literal or by name, without sending anything', async () => {
  const before = received.length;
  for (const uri of [`http://127.0.0.1:${port}/logout`, `http://localhost:${port}/logout`, `http://[::1]:${port}/logout`]) {
    const attempt = postLogoutToken(uri, 'secret-token', 2000, { publicOnly: true });
    await expect(attempt).rejects.toBeInstanceOf(DeliveryFailure);
    await expect(attempt).rejects.toThrow(/EINTERNALADDRESS|ECONNREFUSED/);
  }
  expect(received.length).toBe(before);
});

test('the internal ranges', () => {
  for (const address of ['127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '::1', 'fe80::1', 'fd00::1', '::ffff:127.0.0.1']) {
    expect([address, isInternalAddress(address)]).toEqual([address, true]);
  }
  for (const address of ['93.184.216.34', '8.8.8.8', '2606:4700:4700::1111']) expect([address, isInternalAddress(address)]).toEqual([address, false]);
});
