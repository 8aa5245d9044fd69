// authgate's hosted pages: passkeys (WebAuthn), the pages' only script.
//
// A button `data-passkey` sits in a form of the page:
//   login     starts a login at /auth/passkey/start (the authenticator offers
//             its passkeys), then posts the form to /oauth/passkey;
//   mfa       starts the second step at /auth/mfa/passkey/start with the
//             form's mfa_token, then posts the form to /oauth/mfa;
//   register  takes the creation options the server put in the form's
//             data-options, then posts the form to /account/passkeys/finish.
// The form carries the ceremony's challenge_id and the authenticator's
// answer (WebAuthn's JSON form) in its hidden fields; the server checks
// both, and the form's CSRF token, as for any other form.
(function () {
  'use strict';

  if (!window.PublicKeyCredential || !navigator.credentials) return;
  // WebAuthn needs a domain: at an IP address every ceremony fails.
  if (/^[0-9.]+$|^\[/.test(location.hostname)) return;
  document.documentElement.classList.add('js-passkeys');

  function encode(buffer) {
    var bytes = new Uint8Array(buffer);
    var text = '';
    for (var i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function decode(value) {
    var base64 = value.replace(/-/g, '+').replace(/_/g, '/');
    var text = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
    return Uint8Array.from(text, function (c) { return c.charCodeAt(0); }).buffer;
  }

  function withIds(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, { id: decode(c.id) }); });
  }

  function creationOptions(json) {
    if (PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: decode(json.challenge),
      user: Object.assign({}, json.user, { id: decode(json.user.id) }),
      excludeCredentials: withIds(json.excludeCredentials),
    });
  }

  function requestOptions(json) {
    if (PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    return Object.assign({}, json, {
      challenge: decode(json.challenge),
      allowCredentials: withIds(json.allowCredentials),
    });
  }

  // RegistrationResponseJSON or AuthenticationResponseJSON.
  function answer(credential) {
    if (typeof credential.toJSON === 'function') return credential.toJSON();
    var r = credential.response;
    var response = { clientDataJSON: encode(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = encode(r.attestationObject);
      response.transports = r.getTransports ? r.getTransports() : [];
    } else {
      response.authenticatorData = encode(r.authenticatorData);
      response.signature = encode(r.signature);
      if (r.userHandle) response.userHandle = encode(r.userHandle);
    }
    return {
      id: credential.id,
      rawId: encode(credential.rawId),
      type: credential.type,
      response: response,
      clientExtensionResults: credential.getClientExtensionResults(),
    };
  }

  // A ceremony's start: {challenge_id, publicKey}.
  function start(kind, form) {
    if (kind === 'register') {
      return Promise.resolve({
        challenge_id: form.elements.challenge_id.value,
        publicKey: JSON.parse(form.dataset.options),
      });
    }
    var path = kind === 'mfa' ? '/auth/mfa/passkey/start' : '/auth/passkey/start';
    var body = kind === 'mfa' ? { mfa_token: form.elements.mfa_token.value } : {};
    return fetch(path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
      credentials: 'same-origin',
    }).then(function (res) {
      if (!res.ok) throw new Error(refusal(kind, res));
      return res.json();
    });
  }

  // What a refused start tells the user (the API's own words are for
  // developers).
  function refusal(kind, res) {
    if (res.status === 429) {
      var wait = Number(res.headers.get('retry-after'));
      return wait > 0 ? 'Too many attempts. Try again in ' + wait + ' seconds.' : 'Too many attempts. Try again later.';
    }
    if (kind === 'mfa' && res.status === 401) {
      return 'The sign-in took too long or had too many tries. Sign in again.';
    }
    if (res.status === 503) return 'The service is busy. Try again in a moment.';
    return 'The passkey could not be used now. Try again.';
  }

  function ceremony(kind, publicKey) {
    return kind === 'register'
      ? navigator.credentials.create({ publicKey: creationOptions(publicKey) })
      : navigator.credentials.get({ publicKey: requestOptions(publicKey) });
  }

  function explain(error) {
    // The browser's own words for a cancelled or timed-out prompt say
    // little; refusal()'s are meant for the user.
    if (error && error.name === 'NotAllowedError') return 'The passkey was not used. Try again.';
    if (error && error.name === 'InvalidStateError') return 'This device holds a passkey of this account already.';
    if (error && error.name === 'SecurityError') return 'Passkeys cannot be used at this address.';
    if (error && error.name === 'Error') return error.message;
    return 'The passkey could not be used.';
  }

  Array.prototype.forEach.call(document.querySelectorAll('button[data-passkey]'), function (button) {
    var form = button.form;
    var kind = button.dataset.passkey;
    var shown = form.querySelector('.passkey-error');
    button.hidden = false;
    // Enter in the form's text field posts nothing without an answer.
    form.addEventListener('submit', function (event) {
      if (!form.elements.credential.value) event.preventDefault();
    });
    button.addEventListener('click', function () {
      button.disabled = true;
      shown.hidden = true;
      start(kind, form)
        .then(function (started) {
          return ceremony(kind, started.publicKey).then(function (credential) {
            form.elements.challenge_id.value = started.challenge_id;
            form.elements.credential.value = JSON.stringify(answer(credential));
            form.submit();
          });
        })
        .catch(function (error) {
          shown.textContent = explain(error);
          shown.hidden = false;
          button.disabled = false;
        });
    });
  });
})();
