// Drives Debian's Chromium (headless) through the client's inspector page and the server's
// dashboard, as a person would: a request made through the tunnel appears in the list without
// a reload, its detail shows the body, Replay makes the target see it again, the dashboard
// shows the tunnel's rate. Screenshots go to SCREENSHOT_DIR. Run by tests/browser.rs, which
// starts the server, the client, the target and this script, and checks the target's side.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const inspectorUrl = need("INSPECTOR_URL");
const publicPort = Number(need("PUBLIC_PORT"));
const tunnelHost = need("TUNNEL_HOST");
const tunnelName = need("TUNNEL_NAME");
const dashboardUrl = need("DASHBOARD_URL");
const adminToken = need("ADMIN_TOKEN");
const shots = need("SCREENSHOT_DIR");
const WAIT = 15000;

/** One request through the tunnel's public listener. */
function visit(method, path, body = "", headers = {}) {
  return new Promise((resolve, reject) => {
    const request = http.request(
      { host: "127.0.0.1", port: publicPort, method, path, headers: { host: tunnelHost, ...headers } },
      (response) => {
        const chunks = [];
        response.on("data", (c) => chunks.push(c));
        response.on("end", () => resolve({ status: response.statusCode, body: Buffer.concat(chunks) }));
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = {};
try {
  fs.mkdirSync(shots, { recursive: true });
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(inspectorUrl);
  await page.locator("#live.on").waitFor({ timeout: WAIT });
  await page.evaluate(() => { window.notReloaded = true; });

  const order = JSON.stringify({ item: "book", qty: 2 });
  const sent = await visit("POST", "/orders?from=browser", order, { "content-type": "application/json" });
  check(sent.status === 200, `the tunnel answered ${sent.status}`);
  const row = page.locator("#rows tr", { hasText: "/orders?from=browser" });
  await row.waitFor({ timeout: WAIT });
  check(await page.evaluate(() => window.notReloaded === true), "the list updated without a reload");

  await row.click();
  await page.locator("#request pre").waitFor({ timeout: WAIT });
  const requestBody = await page.locator("#request pre").textContent();
  check(requestBody.includes('"item": "book"'), `the request body is shown pretty-printed: ${requestBody}`);
  const responseBody = await page.locator("#response pre").textContent();
  check(responseBody.includes('"body_bytes"'), `the response body is shown: ${responseBody}`);
  await page.screenshot({ path: `${shots}/inspector-detail.png`, fullPage: true });

  await page.click("#replay");
  await page.locator("#replay-result", { hasText: "Replayed as #" }).waitFor({ timeout: WAIT });
  result.replay = await page.locator("#replay-result").textContent();
  check(result.replay.includes(": 200 "), `the replay was answered: ${result.replay}`);
  await page.locator("#rows tr", { hasText: "↻ /orders?from=browser" }).waitFor({ timeout: WAIT });

  await visit("GET", "/image.png");
  const image = page.locator("#rows tr", { hasText: "/image.png" });
  await image.waitFor({ timeout: WAIT });
  await image.click();
  await page.locator("#response img.preview").waitFor({ timeout: WAIT });
  await page.waitForFunction(() => document.querySelector("#response img.preview").naturalWidth === 2, null, { timeout: WAIT });
  await page.screenshot({ path: `${shots}/inspector-image.png`, fullPage: true });
  check(errors.length === 0, `no script errors on the inspector page: ${errors}`);

  for (let i = 0; i < 5; i++) await visit("GET", `/hello/${i}`);
  const context = await browser.newContext({
    httpCredentials: { username: "admin", password: adminToken },
    viewport: { width: 1440, height: 900 },
  });
  const dashboard = await context.newPage();
  dashboard.on("pageerror", (e) => errors.push(String(e)));
  await dashboard.goto(dashboardUrl);
  const rate = dashboard.locator(`#tunnels tr[data-name="${tunnelName}"] td.rate`);
  await rate.waitFor({ timeout: WAIT });
  await dashboard.waitForFunction(
    (name) => {
      const cell = document.querySelector(`#tunnels tr[data-name="${name}"] td.rate`);
      return cell && Number(cell.textContent) > 0;
    },
    tunnelName,
    { timeout: WAIT },
  );
  result.rate = Number(await rate.textContent());
  result.sessions = await dashboard.locator("#sessions tbody tr").count();
  check(result.sessions === 1, `one session listed, saw ${result.sessions}`);
  await dashboard.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
  check(errors.length === 0, `no script errors on the dashboard: ${errors}`);
  result.ok = true;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
