// corral's sign-in page: register the first passkey with the setup token, sign in, sign out.
// Self-contained (no build step, no inline script: the daemon's CSP runs only its own files).
// The browser does the WebAuthn work; the daemon's options and the credential travel as
// the standard JSON forms (parse*OptionsFromJSON / credential.toJSON()).
"use strict";

const $ = (id) => document.getElementById(id);

function show(section) {
  for (const id of ["setup", "signin", "signedin"]) $(id).hidden = id !== section;
}

function say(text) {
  $("message").textContent = text || "";
}

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (response.status === 204) return null;
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
  return data;
}

// Where to go after signing in: only a path on this daemon, never another site.
function nextPath() {
  const next = new URLSearchParams(location.search).get("next");
  return next && next.startsWith("/") && !next.startsWith("//") ? next : null;
}

async function refresh() {
  const status = await api("/api/auth/status");
  document.body.dataset.state = status.authenticated ? "signed-in" : "signed-out";
  if (status.mode === "none") {
    $("status").textContent = "Sign-in is off on this daemon (auth.mode = none).";
    show(null);
  } else if (status.authenticated) {
    $("status").textContent = `Signed in as ${status.user.display_name || status.user.name}.`;
    show("signedin");
  } else if (status.setup_required) {
    $("status").textContent = "No user yet.";
    show("setup");
  } else {
    $("status").textContent = "Signed out.";
    show("signin");
  }
  return status;
}

async function register(extra) {
  const begin = await api("/api/auth/register/begin", extra);
  const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(begin.options);
  const credential = await navigator.credentials.create({ publicKey });
  const name = $("passkey-name").value.trim();
  return api("/api/auth/register/complete", { credential: credential.toJSON(), name });
}

async function signIn() {
  const begin = await api("/api/auth/login/begin", {});
  const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(begin.options);
  const credential = await navigator.credentials.get({ publicKey });
  return api("/api/auth/login/complete", { credential: credential.toJSON() });
}

function action(button, work) {
  $(button).addEventListener("click", async () => {
    say("");
    $(button).disabled = true;
    try {
      await work();
    } catch (error) {
      say(error.message || String(error));
    } finally {
      $(button).disabled = false;
    }
  });
}

action("register", async () => {
  const result = await register({
    setup_token: $("setup-token").value.trim(),
    username: $("username").value.trim() || "owner",
  });
  $("setup-token").value = "";
  await refresh();
  if (result.signed_in && nextPath()) location.assign(nextPath());
});

action("login", async () => {
  await signIn();
  await refresh();
  if (nextPath()) location.assign(nextPath());
});

action("add-passkey", async () => {
  await register({});
  $("passkey-name").value = "";
  say("Passkey added.");
});

action("logout", async () => {
  await api("/api/auth/logout", {});
  await refresh();
});

if (!window.PublicKeyCredential || !PublicKeyCredential.parseCreationOptionsFromJSON) {
  say("This browser cannot use passkeys here (a secure context such as http://localhost or https is needed).");
}
refresh().catch((error) => say(error.message || String(error)));
