// The hosted connect pages in a real browser (Debian's Chromium, driven by playwright-core),
// against a running system (scripts/browser-test.sh starts one): an OAuth connect, a
// credential form with a bad key and then a good one (by keyboard only), and a broken link.
// Every page is checked with axe-core (WCAG 2.1 A and AA rules: no violation allowed) at
// 1280 px and at 360 px, and photographed into target/browser/.
//
// Environment: GATEWAY (the gateway's URL), API_KEY, CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { readFileSync, mkdirSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const GATEWAY = process.env.GATEWAY ?? "http://127.0.0.1:18080";
const API_KEY = process.env.API_KEY ?? "dev-api-key-change-me";
const SHOTS = process.env.SHOTS ?? "../../target/browser";
mkdirSync(SHOTS, { recursive: true });

let failures = 0;
const check = (ok, what) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failures++;
};

// The product's pages: the one redirect-mode flows return to (it shows what the query says),
// and one that runs a flow in a popup with connect.js and keeps what it was told.
const product = createServer((req, res) => {
  const u = new URL(req.url, "http://x");
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  if (u.pathname === "/popup") {
    res.end(`<!doctype html><html lang="en"><title>Product</title><main><h1>Integrations</h1>
      <button id="connect" type="button">Connect</button><output id="result"></output></main>
      <script src="${GATEWAY}/connect/assets/connect.js"></script>
      <script>
        window.result = null;
        document.getElementById("connect").addEventListener("click", function () {
          authbridge.connect(window.connectUrl, {
            onConnected: function (r) { window.result = Object.assign({ kind: "connected" }, r); },
            onError: function (r) { window.result = Object.assign({ kind: "error" }, r); },
            onClose: function () { window.result = { kind: "closed" }; },
          });
        });
      </script></html>`);
    return;
  }
  res.end(`<!doctype html><html lang="en"><title>Product</title><main><h1>status=${u.searchParams.get("status")}</h1>` +
    `<p id="error">${u.searchParams.get("error") ?? ""}</p></main></html>`);
});
await new Promise((r) => product.listen(0, "127.0.0.1", r));
const RETURN = `http://127.0.0.1:${product.address().port}/settings`;

async function session(provider, connectionId, extra = { return_url: RETURN }) {
  const r = await fetch(`${GATEWAY}/v1/connect/sessions`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ provider, connection_id: connectionId, ...extra }),
  });
  if (r.status !== 201) throw new Error(`session for ${provider}: ${r.status} ${await r.text()}`);
  return (await r.json()).connect_url;
}

// axe-core's WCAG 2.1 A/AA rules on the page as it is now, at both widths, with a screenshot
// of each.
async function audit(page, name) {
  for (const width of [1280, 360]) {
    await page.setViewportSize({ width, height: width === 360 ? 780 : 900 });
    await page.evaluate(axeSource);
    const result = await page.evaluate(() =>
      window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } }),
    );
    const v = result.violations.map((x) => `${x.id}: ${x.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    check(v.length === 0, `${name} at ${width}px: no WCAG 2.1 AA violation${v.length ? " — " + v.join("; ") : ""}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    check(!overflow, `${name} at ${width}px: nothing wider than the screen`);
    await page.screenshot({ path: `${SHOTS}/${name}-${width}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 900 });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic"],
});
try {
  // One pass per stack: the expiry stack's, the branded stack's, or the plain one's.
  pass: {
  if (process.env.EXPIRED) {
    // A stack whose connect links live one second: a link opened too late.
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const url = await session("mock", "too-late", {});
    await new Promise((r) => setTimeout(r, 1500));
    const r = await page.goto(url);
    check(r.status() === 410, "an expired link is gone");
    check((await page.locator("h1").innerText()) === "This link has expired", "and says so in plain words");
    await audit(page, "end-expired");
    await ctx.close();
    break pass;
  }
  if (process.env.BRANDED) {
    // The branded stack (AUTHBRIDGE_CONNECT_PRODUCT_NAME=Acme, a yellow accent, the
    // interstitial on): the interstitial by keyboard, and the branded form.
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(await session("mock", "branded-oauth"));
    check((await page.locator("h1").innerText()) === "Connect Acme to your Mock provider (mock) account", "the interstitial names the product");
    await audit(page, "interstitial-branded");
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement?.classList.contains("button")), "Tab reaches its one button");
    await page.keyboard.press("Enter");
    await page.waitForURL((u) => u.toString().startsWith(RETURN));
    check(new URL(page.url()).searchParams.get("status") === "connected", "Enter goes on to the provider and back");
    await page.goto(await session("kartra", "branded-kartra"));
    check((await page.locator(".lead").innerText()).startsWith("Acme asks for these details."), "the form names the product");
    await audit(page, "form-branded");
    await ctx.close();
    break pass;
  }
  // 1. A credential provider: Kartra's form, a wrong password, then the right one, by keyboard.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(await session("kartra", "browser-kartra"));
    check((await page.title()) === "Connect your Kartra account", "the form is titled for the provider");
    check(await page.locator("label", { hasText: "API key" }).count() === 1, "each field has its label");
    await audit(page, "form");
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement?.name) === "api_key", "Tab reaches the first field");
    await page.keyboard.type("demo-key");
    await page.keyboard.press("Tab");
    check(await page.evaluate(() => document.activeElement?.name) === "api_password", "then the password");
    await page.keyboard.type("not-the-password");
    await page.keyboard.press("Enter");
    await page.waitForLoadState();
    const alert = await page.locator("[role=alert]").innerText();
    check(alert.includes("API password is not valid"), `the provider's words are shown: ${alert.replace(/\s+/g, " ")}`);
    check(!(await page.content()).includes("not-the-password"), "the refused secret is not written back");
    check(await page.inputValue("input[name=api_key]") === "", "secret fields come back empty");
    await audit(page, "form-refused");
    await page.fill("input[name=api_key]", "demo-key");
    await page.fill("input[name=api_password]", "demo-password");
    await page.press("input[name=api_password]", "Enter");
    await page.waitForURL((u) => u.toString().startsWith(RETURN));
    const landed = new URL(page.url());
    check(landed.searchParams.get("status") === "connected", `back at the product: ${landed.search}`);
    await ctx.close();
  }
  // 2. An OAuth provider: redirected to the provider (the mock approves at once) and back.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(await session("mock", "browser-oauth"));
    await page.waitForURL((u) => u.toString().startsWith(RETURN));
    check(new URL(page.url()).searchParams.get("status") === "connected", "the OAuth flow lands connected");
    await ctx.close();
  }
  // 3. A broken link: a page that says what to do, not JSON.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const r = await page.goto(`${GATEWAY}/connect/this-link-is-broken`);
    check(r.status() === 404, "an unknown link is a 404");
    check((await page.locator("h1").innerText()) === "This link does not work", "in plain words");
    await audit(page, "broken-link");
    await ctx.close();
  }
  // 4. Popup mode: the product's page opens the flow with connect.js and is told the result.
  const POPUP_PAGE = `http://127.0.0.1:${product.address().port}/popup`;
  const popupFlow = async (provider, id, inPopup, returnUrl = POPUP_PAGE) => {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(POPUP_PAGE);
    const url = await session(provider, id, { return_url: returnUrl, mode: "popup" });
    await page.evaluate((u) => { window.connectUrl = u; }, url);
    const [popup] = await Promise.all([page.waitForEvent("popup"), page.click("#connect")]);
    await inPopup(popup);
    await page.waitForFunction(() => window.result !== null, null, { timeout: 10000 });
    const result = await page.evaluate(() => window.result);
    await ctx.close();
    return result;
  };
  {
    const r = await popupFlow("mock", "popup-oauth", async () => {});
    check(r.kind === "connected" && r.connection_id === "popup-oauth", `an OAuth popup tells the opener: ${JSON.stringify(r)}`);
    const c = await popupFlow("kartra", "popup-kartra", async (popup) => {
      await popup.waitForLoadState();
      await popup.fill("input[name=api_key]", "demo-key");
      await popup.fill("input[name=api_password]", "demo-password");
      await popup.press("input[name=api_password]", "Enter");
    });
    check(c.kind === "connected" && c.provider === "kartra", `a credential form in a popup tells the opener: ${JSON.stringify(c)}`);
    const closed = await popupFlow("kartra", "popup-closed", async (popup) => {
      await popup.waitForLoadState();
      await popup.close();
    });
    check(closed.kind === "closed", `closing the popup early is reported: ${JSON.stringify(closed)}`);
    // A session made for another origin: its result is not posted to this page.
    const other = await popupFlow("mock", "popup-other-origin", async () => {}, "http://localhost:9/elsewhere");
    check(other.kind === "closed", `the result goes to the session's origin only: ${JSON.stringify(other)}`);
  }
  // 5. No return_url: the flow ends on the gateway's own pages, success and error.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    const url = await session("mock", "no-return", {});
    await page.goto(url);
    await page.waitForURL((u) => u.toString().startsWith(`${GATEWAY}/oauth/callback`));
    check((await page.locator("h1").innerText()) === "Your Mock provider (mock) account is connected", "the connected page names the provider");
    await audit(page, "end-connected");
    const again = await page.goto(url);
    check(again.status() === 410, "a used link is gone");
    check((await page.locator("h1").innerText()) === "This link was already used", "and says so in plain words");
    await audit(page, "end-used");
    await ctx.close();
  }
  // 6. The other end pages a browser can land on: consent denied, another browser, a stray
  //    callback.
  {
    const MOCK = process.env.MOCK;
    const control = (c) => fetch(`${MOCK}/mock/control`, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(c),
    });
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await control({ deny_authorizations: true });
    await page.goto(await session("mock", "denied", {}));
    await page.waitForURL((u) => u.toString().startsWith(`${GATEWAY}/oauth/callback`));
    check((await page.locator("h1").innerText()) === "Connecting was cancelled", "a denied consent says so");
    await audit(page, "end-denied");
    await control({ deny_authorizations: false });
    // The provider's token endpoint fails during the code exchange.
    await control({ token_fail_count: 1, token_fail_status: 503 });
    await page.goto(await session("mock", "exchange-fails", {}));
    await page.waitForURL((u) => u.toString().startsWith(`${GATEWAY}/oauth/callback`));
    check((await page.locator("h1").innerText()) === "The provider could not be reached", "a failed exchange says so");
    await audit(page, "end-exchange-failed");
    await control({});
    // Opened by someone else (here, a script that keeps the redirect and drops the cookie),
    // finished in this browser: the provider's link carries the flow's state, not the cookie.
    const opened = await fetch(await session("mock", "hijack", {}), { redirect: "manual" });
    const authorize = opened.headers.get("location");
    const other = await browser.newContext();
    const victim = await other.newPage();
    await victim.goto(authorize);
    await victim.waitForURL((u) => u.toString().startsWith(`${GATEWAY}/oauth/callback`));
    check((await victim.locator("h1").innerText()) === "This link was opened in another browser", "another browser is refused, in plain words");
    await audit(victim, "end-browser-mismatch");
    await victim.goto(`${GATEWAY}/oauth/callback?code=x&state=stale`);
    check((await victim.locator("h1").innerText()) === "This page belongs to no connection in progress", "a stray callback gets a page");
    await audit(victim, "end-stray-callback");
    await other.close();
    await ctx.close();
  }
  }
} finally {
  await browser.close();
  product.close();
}
console.log(failures ? `\nbrowser tests: ${failures} failed` : "\nbrowser tests: all passed");
process.exit(failures ? 1 : 0);
