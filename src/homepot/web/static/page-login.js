import { saveSession, token } from "/static/app.js";

// Only a path on this site: an absolute URL in ?next= must not send people elsewhere.
function nextPath() {
  const next = new URL(location.href).searchParams.get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login") ? next : "/";
}

if (token()) location.replace(nextPath());

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const submit = document.getElementById("login-submit");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const email = document.getElementById("email").value.trim();
  const password = document.getElementById("password").value;
  if (!email || !password) {
    error.textContent = "Enter your email and password.";
    return;
  }
  submit.disabled = true;
  try {
    const response = await fetch("/api/v1/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ username: email, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      error.textContent =
        response.status === 401 ? "Wrong email or password." : body.detail || `Sign-in failed (${response.status}).`;
      return;
    }
    const me = await fetch("/api/v1/users/me", {
      headers: { Authorization: `Bearer ${body.access_token}` },
    });
    const user = me.ok ? await me.json() : { email };
    saveSession(body.access_token, user);
    location.assign(nextPath());
  } catch (failure) {
    error.textContent = `Could not reach the server: ${failure.message}`;
  } finally {
    submit.disabled = false;
  }
});
