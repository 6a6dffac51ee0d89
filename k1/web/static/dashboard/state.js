/* The page's session: who is signed in, which project is shown, the live connection.
 * One object that every module reads; session.js and live.js write it. */

export const state = {
  token: null,       // the bearer token (also in sessionStorage, for this tab only)
  claims: null,      // its decoded payload: {sub, projects, exp, ...}
  project: null,     // the project the page shows (null: none picked yet)
  socket: null,      // the Socket.IO client
  connected: false,  // whether that socket is connected now
};
